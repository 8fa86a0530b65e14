"""Epoch batching (one bucket per batch, shuffled per epoch, a pure function of
the seed and the epoch) and the step plan of a scanned dataset."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from loratui.engine.dataset.items import ImageItem, ScanResult
from loratui.engine.plan import StepPlan, plan_steps

if TYPE_CHECKING:
    from loratui.engine.schema import Profile


def _bucket_samples(items: list[ImageItem]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        if it.repeats > 0:
            groups.setdefault(tuple(it.bucket), []).extend([i] * it.repeats)
    return dict(sorted(groups.items()))


def batches_per_epoch(items: list[ImageItem], batch_size: int) -> int:
    """Batches in one epoch: each bucket rounds up on its own (batches never mix buckets)."""
    return sum(math.ceil(len(idx) / batch_size) for idx in _bucket_samples(items).values())


def epoch_batches(items: list[ImageItem], batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The batches of one epoch, as lists of indices into ``items``.

    Every item appears ``repeats`` times; a batch holds samples of one bucket
    only; the order is shuffled per epoch. A pure function of its arguments, so
    a resumed run can rebuild an epoch and skip its first k batches exactly."""
    rng = random.Random(f"loratui.epoch_batches:{seed}:{epoch}")
    batches: list[list[int]] = []
    for idx in _bucket_samples(items).values():
        rng.shuffle(idx)
        batches.extend(idx[j : j + batch_size] for j in range(0, len(idx), batch_size))
    rng.shuffle(batches)
    return batches


def plan_for(profile: "Profile", scan: ScanResult) -> StepPlan:
    """The step plan from the scanned items and the profile's batch settings."""
    o = profile.optimization
    return plan_steps(
        scan.train_samples,
        batch_size=o.train_batch_size,
        grad_accum=o.gradient_accumulation_steps,
        epochs=o.max_train_epochs,
        max_train_steps=o.max_train_steps,
        reg_samples=scan.reg_samples,
        batches_per_epoch=batches_per_epoch(scan.items, o.train_batch_size * profile.compute.world_size),
        processes=profile.compute.world_size,
    )


def shard(batch: list[int], rank: int, world: int, batch_size: int) -> tuple[int, int]:
    """(offset, count) of ``rank``'s part of a global ``batch`` of up to
    ``batch_size × world`` samples: consecutive chunks of ``batch_size``, so the
    shards of every epoch cover it exactly once. A short last batch of a bucket
    leaves the last ranks a count of 0 (they still take part in the step)."""
    offset = min(rank * batch_size, len(batch))
    return offset, min(batch_size, len(batch) - offset)
