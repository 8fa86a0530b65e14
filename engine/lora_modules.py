"""The LoRA modules a run would train, without reading any weights
(``loratui check PROFILE --modules``).

The family is told by the checkpoint's header (``engine.models.inspect_model``);
the denoiser and text encoders are built on the meta device from the family's
configs (bundled for single files, ``model.model_config_dir``, or the diffusers
folder's own), and the LoRA is made on them by the same code a run uses
(``LoRANetwork.create``, with the profile's rank, alpha, conv rank, trained
parts and ``network_weights``). So the list is exactly the run's, by the names
the saved file will have, for any family — in seconds, whatever the file's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loratui.engine.problems import Problem, error


@dataclass(frozen=True)
class PlannedModule:
    name: str  # kohya name in the saved file
    component: str  # unet, te, te1, te2...
    kind: str  # linear, conv1x1, conv
    in_dim: int
    out_dim: int
    kernel: tuple[int, ...]
    rank: int
    alpha: float
    algo: str = ""  # a LyCORIS network's module class (LokrModule, LohaModule...); "" for kohya LoRA

    def shape(self) -> str:
        k = f" {'x'.join(map(str, self.kernel))}" if self.kernel and self.kernel != (1, 1) else ""
        return f"{self.in_dim} -> {self.out_dim}{k}"


@dataclass
class ModulePlan:
    family: str = ""
    modules: list[PlannedModule] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    assumed: str = ""  # the model is not here yet: the shape its modules are listed for ("FLUX.1-dev")

    def by_component(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.modules:
            out[m.component] = out.get(m.component, 0) + 1
        return out

    def lines(self) -> list[str]:
        if not self.modules:
            return []
        width = max(len(m.name) for m in self.modules)
        parts = ", ".join(f"lora_{c} {n}" for c, n in self.by_component().items())
        algos = sorted({m.algo for m in self.modules if m.algo})
        what = f"LyCORIS modules: {', '.join(algos)}" if algos else "LoRA modules"
        out = [f"modules  {len(self.modules)} {what} ({parts})"]
        algo_width = max((len(m.algo) for m in self.modules), default=0)
        for m in self.modules:
            algo = f"{m.algo:<{algo_width}}  " if algos else ""
            out.append(f"  {m.name:<{width}}  {algo}{m.kind:<7} {m.shape():<16} rank {m.rank:<4} alpha {m.alpha:g}")
        return out


# the shapes the bundled configs (engine/configs) are, as notes name them
CONFIG_SHAPES = {"sd15": "SD 1.5", "sd2": "SD 2.x", "sd2-v": "SD 2.x (v)", "sdxl": "SDXL base",
                 "sd35-large": "SD3.5 large", "sd35-medium": "SD3.5 medium", "sd3-medium": "SD3 medium", "flux": "FLUX.1-dev"}


def assumed_config(info, ms) -> Path | None:
    """The configs a base model that is not on this machine yet (a rented box, before the
    download) is counted with: ``model.model_config_dir``, else the bundled ones of
    ``model.family`` (SD3: the shape its name says). None: the model is read as it is, or
    there is nothing to count (family auto, or problems other than the missing file's)."""
    from loratui.engine.families import families, get_family, normalize_family

    if info.kind != "missing" or not ms.family or ms.family == "auto" or normalize_family(ms.family) not in families():
        return None
    if any(p.key not in ("model.base_model", "model.vae") for p in info.problems):
        return None  # e.g. model.model_config_dir: the shape itself is in doubt
    if ms.model_config_dir:
        return Path(ms.model_config_dir).expanduser()
    return bundled_configs(get_family(normalize_family(ms.family)), info.spec, bool(ms.v_parameterization))


def bundled_configs(fam, spec: str, v_prediction: bool = False) -> Path:
    """``fam``'s bundled configs for a model named ``spec`` that is not here to read (a missing
    file, a Hub repo not downloaded): SD3 the shape its name says (``config_folder_named``)."""
    from loratui.engine.configs import config_dir

    named = fam.config_folder_named(spec)
    return config_dir(named) if named else fam.config_dir("v_prediction" if v_prediction else "epsilon")


def shape_name(root: Path) -> str:
    """``FLUX.1-dev`` for the bundled ``flux`` configs; a folder of the user's: its name."""
    return CONFIG_SHAPES.get(Path(root).name, Path(root).name)


def _config_root(info, ms, fam) -> Path | None:
    if info.kind == "file":
        if ms.model_config_dir:
            return Path(ms.model_config_dir).expanduser()
        from loratui.engine.models import resolve_prediction

        prediction, _ = resolve_prediction(info, ms)
        return fam.config_dir(prediction)
    return info.path  # a diffusers folder, or a Hub repo's cached snapshot (None when not cached)


def config_subdir(fam, root, sub: str) -> Path:
    """``root``'s ``sub`` folder; for SD3 / Flux the bundled one where ``root`` has none
    (``model.model_config_dir`` may give only some parts, as the run's loader takes it)."""
    own = Path(root) / sub
    if own.is_dir() or not fam.flow_matching:
        return own
    return fam.config_dir("epsilon") / sub


def denoiser_overrides(info, ms, fam) -> dict:
    """A SD3 / Flux single file's transformer shape (medium or large, dev or schnell), read
    from its header, unless ``model.model_config_dir`` has a transformer config; the configs
    give the rest. {} for everything else."""
    if info.kind != "file" or info.path is None or not fam.flow_matching:
        return {}
    if ms.model_config_dir and (Path(ms.model_config_dir).expanduser() / fam.denoiser_subfolder).is_dir():
        return {}
    return fam.header_transformer_config(info.path)


def denoiser_config(info, ms, fam) -> dict | None:
    """The denoiser's config as a run builds it (its folder's or the bundled one, with a
    single file's own shape from its header); None where there is none to read yet."""
    import json

    root = _config_root(info, ms, fam)
    if root is None:
        return None
    cfg = json.loads((config_subdir(fam, root, fam.denoiser_subfolder) / "config.json").read_text(encoding="utf-8"))
    cfg.update(denoiser_overrides(info, ms, fam))
    return cfg


def meta_models(fam, root: Path, overrides: dict | None = None):
    """(denoiser, text encoders) of ``fam`` on the meta device, from the configs in ``root``
    (``overrides``: items of the denoiser's config)."""
    import torch

    import diffusers
    import transformers

    cls = getattr(diffusers, fam.denoiser_class)
    config = dict(cls.load_config(str(config_subdir(fam, root, fam.denoiser_subfolder))))
    config.update(overrides or {})
    with torch.device("meta"):
        denoiser = cls.from_config(config)
        tes = []
        for spec in fam.text_encoders:
            cfg = transformers.AutoConfig.from_pretrained(str(config_subdir(fam, root, spec.subfolder)),
                                                          local_files_only=True)
            tes.append(getattr(transformers, spec.model_class)(cfg))
    return denoiser, tes


def build_meta_models(info, ms, fam):
    """(denoiser, text encoders) of ``fam`` on the meta device, from its configs."""
    root = _config_root(info, ms, fam)
    if root is None:
        raise FileNotFoundError(f"{info.spec} is not in the local Hugging Face cache; its configs are needed")
    return meta_models(fam, root, denoiser_overrides(info, ms, fam))


def plan_modules(profile) -> ModulePlan:
    """The modules ``loratui train`` would put a LoRA on (and train or keep from
    ``network_weights``); ``problems`` say why there is no list."""
    from loratui.engine.families import get_family, normalize_family
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.lora_file import LoRAWeightsError
    from loratui.engine.models import inspect_model

    plan = ModulePlan()
    ms, net = profile.model, profile.network
    info = inspect_model(ms)
    assumed = assumed_config(info, ms) if info.problems else None
    if assumed is None and (info.problems or not info.family):
        plan.problems = list(info.problems) or [error("model.base_model", "the model family cannot be told", "set model.family")]
        return plan
    fam = get_family(normalize_family(ms.family) if assumed is not None else info.family)
    plan.family = fam.name
    plan.assumed = shape_name(assumed) if assumed is not None else ""
    try:
        denoiser, tes = meta_models(fam, assumed, {}) if assumed is not None else build_meta_models(info, ms, fam)
    except (OSError, ValueError, KeyError) as exc:
        plan.problems.append(error("model.model_config_dir" if ms.model_config_dir else "model.base_model",
                                   f"cannot build the {fam.label} model from its configs ({exc})",
                                   "set model.model_config_dir to a diffusers folder of the same architecture"))
        return plan
    from loratui.engine.registries import NETWORK_TYPES

    if NETWORK_TYPES[net.network_type].algo is not None:  # a LyCORIS network, as the run builds it
        return _lycoris_modules(plan, profile, denoiser, tes, fam.name)
    conv = net.network_type == "locon"
    try:
        network = LoRANetwork.create(
            denoiser, tes, fam.name, rank=net.network_dim, alpha=net.network_alpha,
            conv_rank=net.conv_dim if conv else None, conv_alpha=net.conv_alpha if conv else None,
            train_unet=net.train_unet, train_text_encoder=net.train_text_encoder,
            weights=net.network_weights or None, target_filter=fam.lora_target_filter(net),
        )
    except (LoRAWeightsError, ValueError) as exc:
        plan.problems.append(error("network.network_weights" if net.network_weights else "network", str(exc)))
        return plan
    from loratui.engine.lora_fused import base_name

    parts: dict[str, list] = {}  # the parts of a fused layer (FLUX/SD3 qkv, linear1) are one module in the file
    for m in network.modules:
        parts.setdefault(base_name(m.name), []).append(m)
    for name, group in parts.items():
        first, base = group[0], group[0].layer.base_layer
        linear = first.kind == "linear"
        rank = sum(m.rank for m in group)  # down stacked, up block-diagonal (lora_fused)
        plan.modules.append(PlannedModule(
            name, first.component, first.kind,
            base.in_features if linear else base.in_channels,
            sum(m.layer.base_layer.out_features if linear else m.layer.base_layer.out_channels for m in group),
            () if linear else tuple(base.kernel_size), rank, first.alpha / first.rank * rank,
        ))
    return plan


def _lycoris_modules(plan: ModulePlan, profile, denoiser, tes, family: str) -> ModulePlan:
    """A LyCORIS network's modules (``lycoris_network_for``, as a run builds them), each with its algorithm."""
    from loratui.engine.lora_file import LoRAWeightsError
    from loratui.engine.lycoris_net import lycoris_network_for

    net = profile.network
    try:
        network = lycoris_network_for(profile, denoiser, tes, family)
    except (LoRAWeightsError, ValueError, AssertionError, KeyError) as exc:
        key = "network.network_weights" if net.network_weights else "network.network_type"
        plan.problems.append(error(key, f"LyCORIS cannot build a {net.network_type} network with these settings: {exc}"))
        return plan
    for m in network.modules:
        org = getattr(m, "org_module", None)
        org = org[0] if isinstance(org, (list, tuple)) else org
        linear = org is None or not hasattr(org, "kernel_size")
        kernel = () if linear else tuple(org.kernel_size)
        kind = "linear" if linear else ("conv1x1" if kernel == (1, 1) else "conv")
        in_dim = getattr(org, "in_features", getattr(org, "in_channels", 0)) if org is not None else 0
        out_dim = getattr(org, "out_features", getattr(org, "out_channels", 0)) if org is not None else 0
        name = m.lora_name
        component = "unet" if name.startswith("lora_unet_") else name.removeprefix("lora_").split("_", 1)[0]
        alpha = net.conv_alpha if kind == "conv" else net.network_alpha  # (a meta tensor in the module)
        plan.modules.append(PlannedModule(name, component, kind, int(in_dim), int(out_dim), kernel,
                                          int(getattr(m, "lora_dim", 0) or 0), float(alpha), type(m).__name__))
    return plan
