"""Where a run's batches come from: ``BatchSource``.

Each epoch's batches (index lists, shuffled per epoch from the seed); for a
batch, its latents — from the latent cache or encoded on the fly — with the
horizontal flips and caption shuffles/dropout drawn from one ``random.Random``
in a fixed order (flips first, then captions), so that a resumed run, which
restores that RNG, sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from loratui.engine.schema import Profile
from loratui.engine.training.masks import batch_masks


@dataclass
class Batch:
    items: list  # engine.dataset.ImageItem of each sample
    latents: Any  # (N, C, h, w) in the weight dtype, on the device
    crops: list  # (original size, crop top-left, target size) of each sample
    captions: list[str]
    masks: Any = None  # (N, 1, H, W) loss masks (optimization.masked_loss), else None
    # data-parallel runs (engine/distributed.py): this process's part of the global batch
    global_n: int = 0  # samples in the global batch (0: this batch is the whole of it)
    offset: int = 0  # where this part starts in it
    weight: float = 1.0  # share of the global batch's loss: len(items) / global_n (0: a stand-in)

    @property
    def has_reg(self) -> bool:
        return any(it.is_reg for it in self.items)


class BatchSource:
    """Batches of a run. In a data-parallel run ``epoch`` gives the global
    batches (``train_batch_size × processes``) and ``load`` this process's shard
    of one, having drawn the flips and captions of the whole of it, so every
    process's RNG stays where a single process's would be."""

    def __init__(self, profile: Profile, items: list, *, store, vae, device: str, weight_dtype, vae_fp32: bool, world=None):
        self.settings = profile.dataset
        self.profile = profile
        self.items = items
        self.batch_size = profile.optimization.train_batch_size
        self.seed = profile.optimization.seed
        self.store = store  # engine.latent_cache.LatentStore, or None: encode with ``vae`` each step
        self.vae = vae
        self.device = device
        self.weight_dtype = weight_dtype
        self.vae_fp32 = vae_fp32
        self.rng = random.Random(self.seed)  # flips, caption shuffling and dropout
        self.rank, self.processes = (world.rank, world.size) if world is not None else (0, 1)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (1-based), as index lists into the items."""
        from loratui.engine.dataset import epoch_batches

        return epoch_batches(self.items, self.batch_size * self.processes, epoch, self.seed)

    def load(self, batch: list[int]) -> Batch:
        """Latents, crops and captions of one batch (this process's shard of it);
        draws the flips of the whole batch, then its captions."""
        import torch

        from loratui.engine.dataset import process_caption
        from loratui.engine.dataset.batches import shard

        flips = [self._flip() for _ in batch]
        captions = [process_caption(self.items[i].caption, self.settings, self.rng) for i in batch]
        global_n, weight = len(batch), 1.0
        offset, count = 0, len(batch)
        if self.processes > 1:
            offset, count = shard(batch, self.rank, self.processes, self.batch_size)
            weight = count / global_n
            if count == 0:  # a short last batch: this process stands in with a sample of weight 0
                offset, count = 0, 1
        part = slice(offset, offset + count)
        batch, flips, captions = batch[part], flips[part], captions[part]
        items = [self.items[i] for i in batch]
        with torch.no_grad():
            if self.store is not None:
                latents, crops = self._cached(batch, flips)
            else:
                latents, crops = self._encoded(items, flips)
        return Batch(items, latents, crops, captions, batch_masks(self.profile, items, flips, self.device),
                     global_n=global_n if self.processes > 1 else 0, offset=offset, weight=weight)

    def _flip(self) -> bool:
        return self.settings.flip_aug and self.rng.random() < 0.5

    def _cached(self, batch: list[int], flips: list[bool]):
        import torch

        from loratui.engine.training.fastpath import to_device

        latents = to_device(torch.stack([self.store.get(i, f) for i, f in zip(batch, flips)]), self.device, self.weight_dtype)
        return latents, [self.store.crop(i, f) for i, f in zip(batch, flips)]

    def _encoded(self, items: list, flips: list[bool]):
        import torch

        from loratui.engine.dataset import load_image_tensor
        from loratui.engine.latent_cache import encode_pixels
        from loratui.engine.training.fastpath import to_device

        imgs, crops = [], []
        for it, flip in zip(items, flips):
            img, crop = load_image_tensor(it, flip=flip)
            imgs.append(img)
            crops.append(crop)
        pix = to_device(torch.stack(imgs), self.device, torch.float32 if self.vae_fp32 else self.weight_dtype)
        return encode_pixels(self.vae, pix).to(self.device, dtype=self.weight_dtype), crops

    # the RNG, saved with a state and restored on resume
    def rng_state(self):
        return self.rng.getstate()

    def restore_rng(self, state) -> None:
        self.rng.setstate(state)
