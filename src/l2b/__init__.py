"""l2b: Learning to Bootstrap (Zhou et al.) for training classifiers on noisy labels.

The core is :func:`meta_weights`: per-sample weights alpha (trust the observed label) and beta
(trust the model's pseudo-label) from one meta-gradient step on a small clean validation batch.
"""

from .detect import LabelIssues, find_label_issues, rank_label_issues
from .engines import ForwardADUnsupported
from .meta import MetaWeights, bootstrap_loss, meta_weights
from .metaset import select_meta_set
from .normalize import normalize_weights
from .predict import Classifier, load_model
from .runs import Run, compare, download, train
from .step import L2B, StepResult

from .version import __version__

__all__ = [
    "meta_weights",
    "bootstrap_loss",
    "MetaWeights",
    "L2B",
    "StepResult",
    "normalize_weights",
    "ForwardADUnsupported",
    "find_label_issues",
    "select_meta_set",
    "rank_label_issues",
    "LabelIssues",
    "train",
    "compare",
    "Run",
    "download",
    "load_model",
    "Classifier",
    "__version__",
]
