"""Export for serving: TF Serving SavedModels, int8 quantization, TFLite, ONNX.

`serving(model, base_dir, name=...)` publishes `base_dir/name/version/`;
`export_run(run_dir, to)` does it for a run directory's final model;
`onnx(model, folder)` and `export_run_onnx(run_dir, to)` write ONNX files;
`export_run_causal_lm(run_dir, to)` writes a causal LM, adapters merged, as a
keras-hub preset folder or in Hugging Face format.
"""

from kft.export.causal_lm_export import export_run_causal_lm
from kft.export.onnx_export import onnx
from kft.export.run_export import export_run, export_run_onnx
from kft.export.serving_export import serving
from kft.export.versions import next_version
