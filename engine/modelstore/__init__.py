"""The models folder and the Hugging Face cache: what model files are there
(``scan``), and fetching more from the Hub (``download``). No UI, no torch.

The folder is an app setting (``engine.userdirs.models_dir``; default
``<data dir>/models`` with ``checkpoints/``, ``vae/``, ``lora/`` and
``text_encoders/`` as kohya_ss and the WebUIs lay them out).
"""

from loratui.engine.modelstore.catalog import KNOWN_FILES, KnownFile
from loratui.engine.modelstore.scan import FIELD_FOR_KIND, KINDS, LoraSummary, ModelEntry, empty_hint, inspect_file, scan

__all__ = ["FIELD_FOR_KIND", "KINDS", "KNOWN_FILES", "KnownFile", "LoraSummary", "ModelEntry", "empty_hint",
           "inspect_file", "scan"]
