"""Using what a run trained: predictions on new inputs and scores on new labelled data.

`load(RUN_DIR)` opens a run directory's final model once; `predict` and
`evaluate` take it (or the run directory) and return results for the CLI
(`kft predict`, `kft evaluate`) or your code to show.
"""

from kft.inference.evaluate import Evaluation
from kft.inference.evaluate import evaluate
from kft.inference.predict import Prediction
from kft.inference.predict import Predictions
from kft.inference.predict import predict
from kft.inference.run_model import RunModel
from kft.inference.run_model import load
