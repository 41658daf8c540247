"""Distillation from a clean-set teacher (Li et al., "Learning from Noisy Labels with
Distillation", ICCV 2017), as the L2B paper uses it as a baseline.

Setup: a teacher of the run's architecture is trained with cross-entropy on the clean set
(``teacher_epochs``, default the run's epochs, with the run's optimizer and schedule). Training:
each noisy sample's target is ``lam * onehot(y) + (1 - lam) * softmax(teacher(x) / T)`` (their
Eq. 4 without the knowledge-graph term), and the loss is the cross-entropy to that soft target.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from .base import Batch, DataNeeds, Method, SetupContext, StepOutput, fit, register, soft_cross_entropy
from .options import option


@dataclass
class DistillOptions:
    lam: float = option(0.5, "weight of the observed label; 1 - lam goes to the teacher's prediction",
                        check=lambda v: 0.0 <= v <= 1.0 or "must be in [0, 1]")
    temperature: float = option(1.0, "softmax temperature of the teacher", check=lambda v: v > 0 or "must be > 0")
    teacher_epochs: int | None = option(None, "epochs of the teacher on the clean set (none: the run's epochs)",
                                        check=lambda v: v >= 1 or "must be at least 1")


@register
class Distill(Method):
    name = "distill"
    Options = DistillOptions
    checkpointed = ("teacher",)

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True)  # for the teacher's setup only

    @classmethod
    def sees_clean_labels(cls, options: dict) -> bool:
        return True  # the teacher was trained on the clean set

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        # the teacher has the model's architecture; setup() trains it, a checkpoint restores it
        self.teacher = copy.deepcopy(model).eval()

    def setup(self, ctx: SetupContext) -> None:
        self.teacher = ctx.new_model()
        epochs = self.options.teacher_epochs or ctx.epochs
        fit(self.teacher, ctx.new_optimizer(self.teacher), ctx.clean_batches, epochs, ctx.clean_steps,
            ctx.lr_at, ctx.log, what="distill teacher (clean set)")
        self.teacher.eval()

    def soft_targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = torch.softmax(self.teacher(x).float() / self.options.temperature, dim=1)
        lam = self.options.lam
        return lam * F.one_hot(y, self.num_classes).to(teacher) + (1.0 - lam) * teacher

    def loss(self, batch: Batch) -> StepOutput:
        logits = self.model(batch.x)
        target = self.soft_targets(batch.x, batch.y)
        return StepOutput(soft_cross_entropy(logits, target).mean())
