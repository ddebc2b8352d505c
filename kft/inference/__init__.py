"""Using what a run trained: predictions, scores on new labelled data, serving cost.

`load(RUN_DIR)` opens a run directory's final model once; `predict`,
`evaluate` and `generate` take it (or the run directory) and return results
for the CLI (`kft predict`, `kft evaluate`, `kft generate`) or your code to show. `measure_cost(RUN_DIR)`
times the model in every export format (`kft bench`); `wise_ft(RUN_DIR)`
scores the model interpolated with its pretrained start (`kft wise-ft`);
`drift(RUN_DIR, NEW)` tells whether new inputs drifted from the training
data (`kft drift`), against the reference `store_reference` saves at the end
of a run.
"""

from kft.inference.cost import InferenceCost
from kft.inference.cost import measure as measure_cost
from kft.inference.drift import Drift
from kft.inference.drift import DriftReference
from kft.inference.drift import drift
from kft.inference.drift import store_reference
from kft.inference.evaluate import Evaluation
from kft.inference.evaluate import evaluate
from kft.inference.generate import generate
from kft.inference.predict import Prediction
from kft.inference.predict import Predictions
from kft.inference.predict import predict
from kft.inference.run_model import RunModel
from kft.inference.run_model import load
from kft.inference.wise_ft import WiseFT
from kft.inference.wise_ft import wise_ft
