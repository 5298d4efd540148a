"""The performance and cost model: which channel (and algorithm) runs an operation.

* :mod:`afmi.model.params` - :class:`ChannelModel` per channel, defaults, overrides.
* :mod:`afmi.model.predict` - predicted seconds and dollars of one operation.
* :mod:`afmi.model.work` - what all ranks of a collective call do together.
* :mod:`afmi.model.select` - the deterministic choice by hint, and :class:`Explanation`.

See docs/model.md.
"""

from afmi.model.params import (
    DEFAULTS,
    ChannelModel,
    FunctionPrice,
    channel_models,
    function_price,
    load_model_file,
    model_for,
)
from afmi.model.predict import P2P, Prediction, predict, timing, traffic
from afmi.model.select import Explanation, Hint, as_hint, candidates, choose, explain, predict_all
from afmi.model.work import Work, work

__all__ = [
    "DEFAULTS",
    "P2P",
    "ChannelModel",
    "Explanation",
    "FunctionPrice",
    "Hint",
    "Prediction",
    "Work",
    "as_hint",
    "candidates",
    "channel_models",
    "choose",
    "explain",
    "function_price",
    "load_model_file",
    "model_for",
    "predict",
    "predict_all",
    "timing",
    "traffic",
    "work",
]
