"""Which kohya_ss tab a GUI config comes from. Its LoRA tab is what loratui trains;
configs of the other tabs (Textual Inversion, DreamBooth, fine-tune) are refused on
import with that reason, instead of becoming a LoRA profile.

Told apart by their keys: Textual Inversion has ``token_string`` / ``init_word`` /
``num_vectors_per_token``; fine-tune has its metadata files and folders
(``train_dir``, ``image_folder``, ``caption_metadata_filename``,
``latent_metadata_filename``); DreamBooth has none of the LoRA tab's network keys
(``LoRA_type``, ``network_dim``, ``network_alpha``) but a model and an image folder
(and often its text-encoder rates ``learning_rate_te*``).

Cheap to import: no torch.
"""

from __future__ import annotations

from typing import Any

TI_KEYS = ("token_string", "init_word", "num_vectors_per_token")
FINETUNE_KEYS = ("caption_metadata_filename", "latent_metadata_filename", "train_dir", "image_folder")
NETWORK_KEYS = ("LoRA_type", "network_dim", "network_alpha", "network_module", "network_args", "conv_dim")
DREAMBOOTH_KEYS = ("learning_rate_te", "learning_rate_te1", "learning_rate_te2")


def training_kind(data: dict[str, Any], gui: bool) -> tuple[str, list[str]] | None:
    """(the kind, the keys that tell) for a config of a kind loratui does not train; None for LoRA."""
    if any(k in data for k in NETWORK_KEYS):
        return None
    ti = [k for k in TI_KEYS if k in data]
    if ti:
        return "Textual Inversion", ti
    ft = [k for k in FINETUNE_KEYS if k in data]
    if ft:
        return "fine-tune", ft
    if not gui:
        return None
    db = [k for k in DREAMBOOTH_KEYS if k in data]
    if db or ("pretrained_model_name_or_path" in data and "train_data_dir" in data):
        return "DreamBooth", db or ["no LoRA_type / network_dim"]
    return None


def refusal(path: str, data: dict[str, Any], gui: bool) -> str | None:
    """The message for a config of another training kind (None when it is a LoRA config)."""
    kind = training_kind(data, gui)
    if kind is None:
        return None
    name, keys = kind
    return (
        f"{path}: is a kohya_ss {name} config ({', '.join(keys)}), not a LoRA one; loratui trains LoRA / LoCon "
        "networks only. Import a config saved from kohya_ss's LoRA tab, or start from a bundled profile "
        "(profiles/sd15-character.toml, profiles/sdxl-style.toml)"
    )
