"""The dataset report and the step plan: computed before any model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loratui.engine.problems import Problem


@dataclass
class ConceptReport:
    folder: str  # path of the concept folder
    name: str  # class tokens, e.g. "mychar" from "10_mychar"
    repeats: int
    images: int
    missing_captions: int
    unreadable: list[str] = field(default_factory=list)  # "file: reason"
    is_reg: bool = False


@dataclass
class DatasetReport:
    root: str
    concepts: list[ConceptReport] = field(default_factory=list)
    reg_concepts: list[ConceptReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # errors: training cannot start
    warnings: list[Problem] = field(default_factory=list)  # severity "warning"

    @property
    def images(self) -> int:
        return sum(c.images for c in self.concepts)

    @property
    def images_x_repeats(self) -> int:
        return sum(c.images * c.repeats for c in self.concepts)

    @property
    def missing_captions(self) -> int:
        return sum(c.missing_captions for c in self.concepts)


@dataclass(frozen=True)
class StepPlan:
    images_x_repeats: int  # samples per epoch (train images × repeats)
    reg_samples: int  # regularization samples per epoch (matched to train samples)
    batch_size: int
    grad_accum: int
    epochs: int
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int  # optimizer steps for the whole run (max steps when set)
    max_steps_cap: bool  # total_steps comes from max_train_steps
    processes: int = 1  # data-parallel processes: a step takes batch_size × processes × grad_accum samples

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, over all processes."""
        return self.batch_size * self.processes * self.grad_accum

    def describe(self) -> str:
        return (
            f"{self.images_x_repeats} images×repeats per epoch"
            + (f" (+{self.reg_samples} reg)" if self.reg_samples else "")
            + (f" ÷ (batch {self.batch_size} × {self.processes} processes)" if self.processes > 1 else f" ÷ batch {self.batch_size}")
            + f" ÷ accumulation {self.grad_accum}"
            + f" = {self.steps_per_epoch} steps/epoch × {self.epochs} epochs = {self.total_steps} steps"
            + (" (max_train_steps)" if self.max_steps_cap else "")
        )


def plan_steps(
    images_x_repeats: int,
    *,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    max_train_steps: int = 0,
    reg_samples: int = 0,
    batches_per_epoch: int | None = None,
    processes: int = 1,
) -> StepPlan:
    """Steps = images × repeats × epochs ÷ batch ÷ accumulation (or max steps).

    With regularization images each epoch holds as many reg samples as train
    samples (as sd-scripts does), doubling the batches.  ``batches_per_epoch``
    may be given by the bucket sampler (buckets round up per bucket).
    ``processes``: data-parallel processes; a batch is then ``batch_size`` on
    each of them (``batches_per_epoch`` counts such global batches).
    """
    samples = images_x_repeats + reg_samples
    if batches_per_epoch is None:
        batches_per_epoch = math.ceil(samples / (batch_size * processes)) if samples else 0
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum) if batches_per_epoch else 0
    total = steps_per_epoch * epochs
    capped = False
    if max_train_steps:
        total, capped = max_train_steps, True
        if steps_per_epoch:
            epochs = math.ceil(max_train_steps / steps_per_epoch)
    return StepPlan(
        images_x_repeats=images_x_repeats,
        reg_samples=reg_samples,
        batch_size=batch_size,
        grad_accum=grad_accum,
        epochs=epochs,
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        max_steps_cap=capped,
        processes=processes,
    )
