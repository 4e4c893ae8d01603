"""Data-aware refit of converted N-Jet layers on unlabeled calibration images, layer by layer in network order.

One concept per file: the options (:mod:`.options`), the pass driver (:mod:`.driver`), the refit strategies behind
one interface (:mod:`.strategy`; :mod:`.exact`, :mod:`.blockwise`, :mod:`.pointwise`, their shared σ search in
:mod:`.njet_refit`), where samples are taken (:mod:`.sampling`), the network structure the pass needs
(:mod:`.graph`), the batch-norm stage (:mod:`.reestimate`), the held-out slice (:mod:`.holdout`) and the progress
display (:mod:`.progress`).
"""

from .driver import STRATEGIES, calibrate, calibrate_layers
from .options import CalibrationOptions
from .strategy import LayerRefit, LayerResult, RefitJob

__all__ = ["STRATEGIES", "CalibrationOptions", "LayerRefit", "LayerResult", "RefitJob", "calibrate",
           "calibrate_layers"]
