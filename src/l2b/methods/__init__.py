"""Training methods, looked up by name: ``create_method("l2b", model, optimizer, **options)``."""

from . import bootstrap, ce, coteaching, distill, forward, glc, l2b, mixup, mlc, mwnet  # noqa: F401  (registers the methods)
from .base import (METHODS, Batch, DataNeeds, EpochContext, Method, SetupContext, StepOutput, create_method,
                   declared_options, learns_from_clean, needs_of, options_of, register)

__all__ = ["METHODS", "Batch", "DataNeeds", "EpochContext", "Method", "SetupContext", "StepOutput", "create_method",
           "declared_options", "learns_from_clean", "needs_of", "options_of", "register"]
