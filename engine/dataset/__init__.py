"""The dataset: scan, report, buckets, captions, batches and image loading.

Layout (the kohya_ss convention)::

    train_data_dir/
        10_mychar/            <repeats>_<class tokens>
            img001.png
            img001.txt        caption (optional; else the class tokens)
        5_other style/
    reg_data_dir/             optional, same layout, regularization images

``scan_dataset`` reads only image headers (a few hundred bytes each, plus the
last bytes of the file to catch truncated downloads) and returns a
``ScanResult``: the ``DatasetReport`` (what the user sees before any model
loads) and the list of ``ImageItem`` the trainer uses. Nothing here imports
torch at module level; numpy and Pillow are imported inside functions.

The package's modules, each one concern:

- :mod:`.items` — ``ImageItem`` and ``ScanResult`` (and its ``ss_*`` tables);
- :mod:`.concepts` — the ``<repeats>_<name>`` folder name (``CONCEPT_DIR_RE``);
- :mod:`.captions` — reading caption files, the caption a step sees;
- :mod:`.scan` — the folder scanner, concept balancing, reg matching;
- :mod:`.batches` — epoch batches and the step plan;
- one image file (header probe, decode to a bucket) is :mod:`engine.imagefile`,
  the latent cache :mod:`engine.latent_cache` (both used here, neither uses this
  package, so there is no import cycle).
"""

from __future__ import annotations

from loratui.engine.dataset.batches import batches_per_epoch, epoch_batches, plan_for
from loratui.engine.dataset.captions import process_caption, read_caption
from loratui.engine.dataset.concepts import CONCEPT_DIR_RE, parse_concept_dir
from loratui.engine.dataset.items import ImageItem, ScanResult
from loratui.engine.dataset.scan import UPSCALE_WARN, scan_dataset
from loratui.engine.imagefile import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    CropInfo,
    DatasetError,
    array_to_tensor,
    load_image_array,
    load_image_tensor,
    probe_image,
)
from loratui.engine.latent_cache import CACHE_DIR_NAME, LatentCacheError, LatentStore, cache_latents, vae_fingerprint

__all__ = [
    "CACHE_DIR_NAME",
    "CONCEPT_DIR_RE",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "UPSCALE_WARN",
    "CropInfo",
    "DatasetError",
    "ImageItem",
    "LatentCacheError",
    "LatentStore",
    "ScanResult",
    "array_to_tensor",
    "batches_per_epoch",
    "cache_latents",
    "epoch_batches",
    "load_image_array",
    "load_image_tensor",
    "parse_concept_dir",
    "plan_for",
    "probe_image",
    "process_caption",
    "read_caption",
    "scan_dataset",
    "vae_fingerprint",
]
