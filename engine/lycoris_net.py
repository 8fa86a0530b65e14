"""LyCORIS networks (LoCon, LoHa, LoKr, (IA)³, DoRA, GLoRA, Diag-OFT, BOFT,
native fine-tuning, DyLoRA), built by the ``lycoris-lora`` package exactly as
kohya_ss trains them (``--network_module=lycoris.kohya`` with
``network_args algo=...``): the modules, their initialisation, their forward
and the tensors they save are LyCORIS's own.

What loratui adds around ``lycoris.kohya.create_network``:

- the preset's module classes read on diffusers models (diffusers'
  ``Attention`` is sd-scripts' ``CrossAttention``; ``TimestepEmbedding`` is
  left out: with the ``time_embedding.linear_*`` names of the preset it would
  make every module twice);
- module names as sd-scripts' models give them (``lora_unet_...`` with the SGM
  layout for SDXL, ``lora_te_text_model_...`` / ``lora_te1_`` / ``lora_te2_``),
  so AUTOMATIC1111, Forge and ComfyUI load the file;
- the same interface as :class:`loratui.engine.lora.LoRANetwork` (parameters
  per part, the file's state dict, save with ``ss_*`` metadata and sshs
  hashes), plus the raw parameters for saved states (exact resume).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loratui.engine.families import get_family, normalize_family
from loratui.engine.kohya_names import text_encoder_lora_name, text_encoder_prefix
from loratui.engine.lora_file import LoRAWeightsError, read_lora_file
from loratui.engine.registries import NETWORK_TYPES, lycoris_values

# the top-level diffusers U-Net layers of the "full" preset, in the SGM layout
_SGM_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_CLASS_ATTRS = ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME",
                "TEXT_ENCODER_TARGET_REPLACE_MODULE", "TEXT_ENCODER_TARGET_REPLACE_NAME",
                "MODULE_ALGO_MAP", "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")
_DEFAULTS: dict[str, Any] = {}


def _kohya_class():
    """``LycorisNetworkKohya`` with the class-level targets put back as the
    package defines them: ``apply_preset`` changes the class, and one process
    may build several networks."""
    import copy

    from lycoris.kohya import LycorisNetworkKohya as K

    if not _DEFAULTS:
        _DEFAULTS.update({a: copy.deepcopy(getattr(K, a)) for a in _CLASS_ATTRS})
    for a, v in _DEFAULTS.items():
        setattr(K, a, copy.deepcopy(v))
    return K


def resolve_preset(name: str) -> dict[str, Any]:
    """A LyCORIS preset (a built-in name or a .toml file) as read on diffusers models."""
    from lycoris.config import PRESET
    from lycoris.utils.preset import read_preset

    preset = dict(PRESET[name]) if name in PRESET else dict(read_preset(name))
    if "unet_target_module" in preset:
        mods = []
        for m in preset["unet_target_module"]:
            m = "Attention" if m in ("CrossAttention", "SelfAttention") else m
            if m != "TimestepEmbedding" and m not in mods:
                mods.append(m)
        preset["unet_target_module"] = mods
    # names are matched from the start of the module path (re.match): a layer name
    # such as "to_k" (the ia3 preset) matches it inside any block
    for key in ("unet_target_name", "text_encoder_target_name"):
        if key in preset and not preset.get("use_fnmatch"):
            preset[key] = [_anywhere(t) for t in preset[key]]
    if "name_algo_map" in preset and not preset.get("use_fnmatch"):
        preset["name_algo_map"] = {_anywhere(k): v for k, v in preset["name_algo_map"].items()}
    return preset


def _anywhere(name: str) -> str:
    import re

    if preset_is_pattern(name):
        return name
    return r"(?:.*\.)?" + re.escape(name) + "$"


def preset_is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[]()^$+\\|")


def kohya_names(unet, text_encoders: list, family: str) -> dict[str, str]:
    """{the name LyCORIS gives a module of these diffusers models: its sd-scripts name}."""
    out: dict[str, str] = {}
    if unet is not None:
        namer = get_family(normalize_family(family)).unet_lora_namer(unet.config)
        probe = "down_blocks.0.resnets.0.conv1"
        sgm = namer(probe) != f"lora_unet_{probe}".replace(".", "_")
        for path, _ in unet.named_modules():
            if not path:
                continue
            if sgm and path in _SGM_TOP:
                name = f"lora_unet_{_SGM_TOP[path]}".replace(".", "_")
            else:
                name = namer(path)
            out[f"lora_unet_{path}".replace(".", "_")] = name
    count = len(text_encoders)
    for i, te in enumerate(text_encoders):
        prefix = text_encoder_prefix(i, count)
        for path, _ in te.named_modules():
            if path:
                out[f"{prefix}_{path}".replace(".", "_")] = text_encoder_lora_name(path, prefix)
    return out


def _te_arg(text_encoders: list):
    """What LyCORIS takes: one text encoder alone (``lora_te_``), two as a list (``lora_te1_``/``lora_te2_``)."""
    if not text_encoders:
        return None
    return text_encoders[0] if len(text_encoders) == 1 else list(text_encoders)


def _check_file_algo(meta: Mapping[str, str], entry, source: str) -> None:
    """A file whose ss_network_args name another algorithm: say which type to choose."""
    import json

    try:
        algo = json.loads(meta.get("ss_network_args") or "{}").get("algo")
    except (ValueError, AttributeError):
        return
    module = meta.get("ss_network_module", "")
    if module.startswith("lycoris") and algo and str(algo).strip('"').lower() not in (entry.algo, "lora" if entry.algo == "locon" else ""):
        same = [n.name for n in NETWORK_TYPES.values() if n.algo == str(algo).strip('"').lower()]
        raise LoRAWeightsError(
            f"{source}: was trained as LyCORIS algo={algo}, not {entry.algo}; set network.network_type to "
            f"{same[0] if same else algo!r} (and the settings in its ss_network_args) to continue it"
        )


class LycorisNetwork:
    """A LyCORIS network on a U-Net and its text encoders, with sd-scripts' names.
    Build it with :meth:`create`."""

    is_lycoris = True

    def __init__(self, family: str, unet, text_encoders: list, net, network_type: str,
                 train_unet: bool, train_text_encoder: bool):
        self.family = family
        self.unet = unet
        self.text_encoders = text_encoders
        self.net = net  # lycoris.kohya.LycorisNetworkKohya
        self.network_type = network_type
        self.train_unet = train_unet
        self.train_text_encoder = train_text_encoder

    @classmethod
    def create(cls, unet, text_encoders: Iterable | None, family: str, *, network_type: str, rank: int,
               alpha: float | None, conv_rank: int, conv_alpha: float, options: Mapping[str, Any] | None = None,
               train_unet: bool = True, train_text_encoder: bool = True,
               weights: str | Path | None = None) -> LycorisNetwork:
        """``options``: the network settings by their kohya_ss names (``preset``,
        ``factor``, ``use_tucker``, ...; see ``registries.lycoris_args``).
        ``weights``: continue from a LyCORIS file made with the same settings
        (LoRAWeightsError when it does not fit)."""
        import torch
        from lycoris.kohya import create_network

        from lycoris.logging import logger as lyco_logger

        family = normalize_family(family)
        text_encoders = list(text_encoders or [])
        if not train_unet and not train_text_encoder:
            raise ValueError("nothing to train: enable train_unet or train_text_encoder")
        entry = NETWORK_TYPES[network_type]
        kwargs = dict(options or {})
        preset_name = str(kwargs.pop("preset", "full") or "full")
        klass = _kohya_class()
        klass.apply_preset(resolve_preset(preset_name))
        kwargs["preset"] = "full"  # already applied (resolved for diffusers); "full" would apply the raw one again
        if "constrain" in kwargs:  # kohya_ss's spelling; LyCORIS reads constraint
            kwargs["constraint"] = kwargs.pop("constrain")
        if "unit" in kwargs:
            kwargs["block_size"] = kwargs.pop("unit")
        te_arg = _te_arg(text_encoders)
        level = lyco_logger.level
        lyco_logger.setLevel(logging.ERROR)
        try:
            import lycoris.kohya as lk

            saved_preset = lk.PRESET.get("full")
            lk.PRESET["full"] = {}  # create_network applies PRESET["full"]: the resolved preset stays
            try:
                net = create_network(1.0, int(rank), float(alpha or rank), None, te_arg, unet,
                                     warn_on_unmatched=False, algo=entry.algo, conv_dim=int(conv_rank),
                                     conv_alpha=float(conv_alpha), **kwargs)
            finally:
                lk.PRESET["full"] = saved_preset
        finally:
            lyco_logger.setLevel(level)
        names = kohya_names(unet, text_encoders, family)
        for lora in net.unet_loras + net.text_encoder_loras:
            lora.lora_name = names.get(lora.lora_name, lora.lora_name)
        file_sd = None
        in_file: set[str] = set()
        if weights is not None and str(weights) != "":
            file_sd, meta = read_lora_file(weights)
            _check_file_algo(meta or {}, entry, str(Path(weights).expanduser()))
            in_file = {("unet" if k.startswith("lora_unet_") else "te") for k in file_sd}
        net.apply_to(te_arg, unet, apply_text_encoder=bool(text_encoders) and (train_text_encoder or "te" in in_file),
                     apply_unet=unet is not None and (train_unet or "unet" in in_file))
        if not net.loras:
            raise ValueError(f"the LyCORIS preset {preset_name!r} selects no layer of this model for {entry.label}")
        device = next(unet.parameters()).device if unet is not None else next(text_encoders[0].parameters()).device
        net.to(device=device, dtype=torch.float32)
        out = cls(family, unet, text_encoders, net, network_type, train_unet, train_text_encoder)
        if file_sd is not None:
            out.load_kohya_state_dict(file_sd, source=str(Path(weights).expanduser()), strict=False)
        out._set_trainable()
        return out

    def _set_trainable(self) -> None:
        for lora in self.net.unet_loras:
            lora.requires_grad_(self.train_unet)
        for lora in self.net.text_encoder_loras:
            lora.requires_grad_(self.train_text_encoder)

    # ---------------------------------------------------------------- reporting

    @property
    def modules(self) -> list:
        return list(self.net.loras)

    @property
    def num_modules(self) -> int:
        return len(self.net.loras)

    @property
    def module_names(self) -> list[str]:
        return [m.lora_name for m in self.net.loras]

    def algo_table(self) -> dict[str, int]:
        """{LyCORIS module class: count}, e.g. ``{"LokrModule": 140}``."""
        return dict(Counter(type(m).__name__ for m in self.net.loras))

    def rank_summary(self) -> dict[tuple[int, float], int]:
        def alpha(m) -> float:
            a = getattr(m, "alpha", None)
            return float(a) if a is not None else 0.0

        return dict(Counter((int(getattr(m, "lora_dim", 0) or 0), alpha(m)) for m in self.net.loras))

    def describe(self) -> str:
        """One line: the algorithm, the modules and what they are."""
        entry = NETWORK_TYPES[self.network_type]
        table = ", ".join(f"{n}× {k}" for k, n in sorted(self.algo_table().items()))
        return (f"LyCORIS {entry.label} (algo={entry.algo}): {self.num_modules} modules ({table}), "
                f"{self.num_parameters():,} trainable parameters")

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in (self.parameters() if trainable_only else self.net.parameters()))

    # ---------------------------------------------------------------- parameters

    def unet_parameters(self) -> list:
        if not self.train_unet:
            return []
        return [p for m in self.net.unet_loras for p in m.parameters() if p.requires_grad]

    def text_encoder_parameters(self) -> list:
        if not self.train_text_encoder:
            return []
        return [p for m in self.net.text_encoder_loras for p in m.parameters() if p.requires_grad]

    def parameters(self) -> list:
        return self.unet_parameters() + self.text_encoder_parameters()

    # ---------------------------------------------------------------- tensors

    def kohya_state_dict(self, dtype=None) -> dict:
        """The file's tensors (LyCORIS's own state dict: ``hada_w1_a``, ``lokr_w1``,
        ``dora_scale``, ``alpha``...) on the CPU, in ``dtype`` (alpha too, as
        sd-scripts saves it); float32 by default."""
        out = {}
        for k, t in self._file_tensors().items():
            t = t.detach().to("cpu")
            if dtype is not None:
                t = t.to(dtype)
            out[k] = t.contiguous().clone()
        return out

    def _file_tensors(self) -> dict:
        """LyCORIS's state dict, with DyLoRA's conv ``lora_up`` as 4-D [out, rank, 1, 1]
        (as sd-scripts' networks.dylora and LoCon save it; LyCORIS writes it 2-D)."""
        sd = self.net.state_dict()
        for m in self._dylora():
            up, down = f"{m.lora_name}.lora_up.weight", f"{m.lora_name}.lora_down.weight"
            if sd[down].dim() == 4 and sd[up].dim() == 2:
                sd[up] = sd[up].reshape(*sd[up].shape, 1, 1)
        return sd

    def _dylora(self) -> list:
        return [m for m in self.net.loras if type(m).__name__ == "DyLoraModule"]

    def load_kohya_state_dict(self, sd: Mapping[str, Any], *, strict: bool = True, source: str = "LyCORIS") -> list[str]:
        """Load a file's tensors. They must be exactly the tensors this network
        saves (same algorithm and settings); LoRAWeightsError otherwise, with nothing changed."""
        import torch

        own = self._file_tensors()
        unknown = [k for k in sd if k not in own]
        bad = [f"{k}: {list(sd[k].shape)} in the file, {list(own[k].shape)} here" for k in sd
               if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in sd]
        file_modules = {k.split(".", 1)[0] for k in sd}
        if not strict:
            missing = [k for k in missing if k.split(".", 1)[0] in file_modules]
        if unknown or bad or missing:
            what = (f"{len(unknown)} tensor(s) this network does not have, e.g. {unknown[0]}" if unknown
                    else bad[0] if bad else f"{len(missing)} tensor(s) of the network are missing, e.g. {missing[0]}")
            raise LoRAWeightsError(
                f"{source}: does not match this {NETWORK_TYPES[self.network_type].label} network: {what}; "
                "continue with the network settings the file was trained with (its ss_network_args)"
            )
        sd = {k: v.to(torch.float32) for k, v in sd.items()}
        with torch.no_grad():
            for m in self._dylora():  # LyCORIS's DyLoRA does not load its own file: split it into its blocks
                up, down = sd.pop(f"{m.lora_name}.lora_up.weight", None), sd.pop(f"{m.lora_name}.lora_down.weight", None)
                sd.pop(f"{m.lora_name}.alpha", None)
                if up is None or down is None:
                    continue
                up, down, bs = up.flatten(1), down.reshape(m.lora_dim, -1), m.block_size
                for i, (u, d) in enumerate(zip(m.up_list, m.down_list)):
                    u.copy_(up[:, i * bs:(i + 1) * bs])
                    d.copy_(down[i * bs:(i + 1) * bs])
            self.net.load_state_dict(sd, strict=False)
        return sorted(file_modules)

    def state_tensors(self) -> dict:
        """Every parameter as it is (float32), for saved states: a resume puts them back bit for bit."""
        return {k: p.detach().to("cpu", copy=True).contiguous() for k, p in self.net.named_parameters()}

    def load_state_tensors(self, sd: Mapping[str, Any], *, source: str = "state") -> None:
        import torch

        own = dict(self.net.named_parameters())
        if set(sd) != set(own) or any(tuple(sd[k].shape) != tuple(own[k].shape) for k in own):
            raise LoRAWeightsError(f"{source}: its tensors are not those of this {NETWORK_TYPES[self.network_type].label} network")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(sd[k].to(p.dtype))

    def save(self, path, metadata=None, dtype=None) -> Path:
        """As :meth:`LoRANetwork.save`: atomic, ``ss_*`` metadata with the sshs hashes."""
        from loratui.engine.lora import LoRANetwork

        return LoRANetwork.save(self, path, metadata, dtype)  # type: ignore[arg-type]

    def enable_gradient_checkpointing(self) -> None:
        from loratui.engine.lora import LoRANetwork

        LoRANetwork.enable_gradient_checkpointing(self)  # type: ignore[arg-type]


def lycoris_network_for(profile, unet, text_encoders: list, family: str) -> LycorisNetwork:
    """The profile's LyCORIS network on these models (a run's, or meta-device ones for
    ``check --modules``); raises LyCORIS's own errors."""
    n = profile.network
    opts = lycoris_values(n)
    for k in ("algo", "conv_dim", "conv_alpha"):
        opts.pop(k, None)
    return LycorisNetwork.create(
        unet, text_encoders, family, network_type=n.network_type, rank=n.network_dim,
        alpha=n.network_alpha, conv_rank=n.conv_dim, conv_alpha=n.conv_alpha, options=opts,
        train_unet=n.train_unet, train_text_encoder=n.train_text_encoder, weights=n.network_weights or None,
    )


def build_lycoris_network(profile, comp, emit, warn) -> LycorisNetwork:
    """The profile's LyCORIS network on the loaded components (seeded: the same
    seed gives the same initial weights); logs which algorithm, how many modules."""
    import random

    import torch

    from loratui.engine.events import LogEvent
    from loratui.engine.training.paths import TrainingError

    opt, n = profile.optimization, profile.network
    torch.manual_seed(opt.seed)
    random.seed(opt.seed)
    for m in [comp.unet, comp.vae, *comp.text_encoders]:
        m.requires_grad_(False)
    try:
        network = lycoris_network_for(profile, comp.unet, comp.text_encoders, comp.family)
    except (ValueError, AssertionError, KeyError) as exc:  # LyCORIS's own refusals
        raise TrainingError(f"network.network_type: LyCORIS cannot build a {n.network_type} network with these settings: {exc}",
                            "check network.lycoris_preset and the network settings the algorithm reads (README: network types)") from None
    if opt.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    emit(LogEvent(message=network.describe()))
    return network
