"""Export for serving: TF Serving SavedModels, int8 quantization, TFLite, ONNX.

`serving(model, base_dir, name=...)` publishes `base_dir/name/version/`;
`export_run(run_dir, to)` does it for a run directory's final model;
`onnx(model, folder)` and `export_run_onnx(run_dir, to)` write ONNX files.
"""

from kft.export.onnx_export import onnx
from kft.export.run_export import export_run, export_run_onnx
from kft.export.serving_export import serving
from kft.export.versions import next_version
