"""Export for serving: TF Serving SavedModels, int8 quantization, TFLite.

`serving(model, base_dir, name=...)` publishes `base_dir/name/version/`;
`export_run(run_dir, to)` does it for a run directory's final model.
"""

from kft.export.run_export import export_run
from kft.export.serving_export import serving
from kft.export.versions import next_version
