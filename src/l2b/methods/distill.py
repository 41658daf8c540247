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

from .base import Batch, Method, SetupContext, StepOutput, fit, register, soft_cross_entropy


@register
class Distill(Method):
    name = "distill"
    needs_clean = True
    clean_per_step = False
    has_setup = True
    options = {"lam": 0.5, "temperature": 1.0, "teacher_epochs": None}
    option_types = {"teacher_epochs": int}
    checkpointed = ("teacher",)

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        if not 0.0 <= float(self.opts["lam"]) <= 1.0:
            raise ValueError(f"distill lam must be in [0, 1], got {self.opts['lam']}")
        # the teacher has the model's architecture; setup() trains it, a checkpoint restores it
        self.teacher = copy.deepcopy(model).eval()

    def setup(self, ctx: SetupContext) -> None:
        self.teacher = ctx.new_model()
        epochs = int(self.opts["teacher_epochs"] or ctx.epochs)
        fit(self.teacher, ctx.new_optimizer(self.teacher), ctx.clean_batches, epochs, ctx.clean_steps,
            ctx.lr_at, ctx.log, what="distill teacher (clean set)")
        self.teacher.eval()

    def soft_targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = torch.softmax(self.teacher(x).float() / float(self.opts["temperature"]), dim=1)
        lam = float(self.opts["lam"])
        return lam * F.one_hot(y, self.num_classes).to(teacher) + (1.0 - lam) * teacher

    def loss(self, batch: Batch) -> StepOutput:
        logits = self.model(batch.x)
        target = self.soft_targets(batch.x, batch.y)
        return StepOutput(soft_cross_entropy(logits, target).mean())
