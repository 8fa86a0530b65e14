"""Dataset inspection as a library: what `loratui dataset DIR` prints and the
dataset screen shows, plus the few edits a user makes before training.

Read-only part (``inspect_dataset``, :mod:`.inspector`) builds on
:func:`engine.dataset.scan_dataset` (the same scan training uses, so the
concepts, captions and buckets shown are the ones training gets) and adds:

- per image: size, bucket, caption, file size; "tiny" images (enlarged more than
  ``engine.dataset.UPSCALE_WARN``× to fill their bucket) — :mod:`.results`;
- a full decode of every image (the scan reads headers only), which finds
  images corrupt in the middle, and two hashes: exact duplicates (the SHA-256 of
  the file's bytes) and near duplicates (a difference hash and the mean colour)
  — :mod:`.duplicates`;
- the tag frequency table (``ScanResult.tag_frequency``), bucket counts,
  suggested repeats (:func:`suggest_repeats`, from PRODUCT.md's numbers,
  :mod:`.guidance`) and a balancing plan (the rule ``dataset.balance_concepts``
  applies at training time, keeping a folder's repeats where they are as close to
  the mean as the rounded value, so balancing twice changes nothing).

Edits, each refusing rather than overwriting anything: :func:`set_repeats`
(rename ``10_x`` → ``6_x``) and :func:`apply_balance` (:mod:`.repeats`),
:func:`save_caption` (atomic write, :mod:`.captions`) and
:func:`make_kohya_folder` (a ``<repeats>_<name>`` folder from a flat folder of
images, copied or linked; the source is never changed, :mod:`.kohya_folder`).

No textual, no torch: Pillow and hashlib only, imported where used.
"""

from __future__ import annotations

from loratui.engine.inspection.captions import caption_file, load_caption, save_caption
from loratui.engine.inspection.duplicates import (
    NEAR_DUPLICATE_BITS,
    NEAR_DUPLICATE_COLOUR,
    DuplicateGroup,
    find_duplicates,
    hash_distance,
    image_fingerprint,
)
from loratui.engine.inspection.errors import InspectError
from loratui.engine.inspection.guidance import MAX_REPEATS, RepeatsSuggestion, suggest_epochs, suggest_repeats
from loratui.engine.inspection.inspector import dataset_settings, inspect_dataset
from loratui.engine.inspection.kohya_folder import LINK_MODES, MakeKohyaResult, make_kohya_folder
from loratui.engine.inspection.repeats import apply_balance, find_concept, parse_concept_folder, repeats_target, set_repeats
from loratui.engine.inspection.results import ConceptInfo, DatasetInspection, ImageInfo, Issue

__all__ = [
    "LINK_MODES",
    "MAX_REPEATS",
    "NEAR_DUPLICATE_BITS",
    "NEAR_DUPLICATE_COLOUR",
    "ConceptInfo",
    "DatasetInspection",
    "DuplicateGroup",
    "ImageInfo",
    "InspectError",
    "Issue",
    "MakeKohyaResult",
    "RepeatsSuggestion",
    "apply_balance",
    "caption_file",
    "dataset_settings",
    "find_concept",
    "find_duplicates",
    "hash_distance",
    "image_fingerprint",
    "inspect_dataset",
    "load_caption",
    "make_kohya_folder",
    "parse_concept_folder",
    "repeats_target",
    "save_caption",
    "set_repeats",
    "suggest_epochs",
    "suggest_repeats",
]
