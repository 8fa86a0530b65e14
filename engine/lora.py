"""The LoRA network (built with peft); its kohya-format file is engine.lora_file.

``LoRANetwork.create`` injects peft LoRA layers into exactly the modules
sd-scripts' ``networks/lora.py`` targets by default:

- U-Net: every Linear and Conv2d inside ``Transformer2DModel`` blocks
  (attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2, proj_in,
  proj_out).  With a conv rank (LoCon) also the layers inside ResnetBlock2D /
  Downsample2D / Upsample2D: 3x3 convs get the conv rank/alpha, Linear and 1x1
  convs there the main rank/alpha -- as sd-scripts does.
- Text encoders: the Linear layers of CLIPAttention and CLIPMLP.

Scale = alpha / rank.  Down is initialised kaiming-uniform (a=sqrt(5)), up with
zeros, in float32 -- LoRA parameters stay float32 whatever the base model's
dtype (peft casts the input to the adapter's dtype and the result back).

The file has sd-scripts' key names (see ``engine.kohya_names``) with
``.lora_down.weight``, ``.lora_up.weight`` and a scalar ``.alpha`` per module.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratui.engine.families import get_family
from loratui.engine.families import family_label, normalize_family
from loratui.engine.kohya_names import text_encoder_prefix
from loratui.engine.lora_fused import base_name, part_layout
from loratui.engine.lora_fused import fuse as fuse_parts
from loratui.engine.lora_fused import split as split_fused
from loratui.engine.lora_file import (
    LoRAWeightsError,
    _family_hint,
    _FileModule,
    _meta_str,
    as_dtype,
    parse_kohya_state_dict,
    read_lora_file,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

ADAPTER_NAME = "loratui"

@dataclass
class LoRAModule:
    """One injected LoRA module."""

    name: str  # kohya name, e.g. lora_unet_down_blocks_0_attentions_0_proj_in
    component: str  # "unet", "te", "te1" or "te2"
    path: str  # module path inside its model (diffusers / transformers naming)
    kind: str  # "linear", "conv1x1" or "conv" (kernel > 1)
    rank: int
    alpha: float
    layer: Any = field(repr=False, default=None)  # the peft LoraLayer

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def down(self) -> torch.nn.Module:
        return self.layer.lora_A[ADAPTER_NAME]

    @property
    def up(self) -> torch.nn.Module:
        return self.layer.lora_B[ADAPTER_NAME]


@dataclass
class _Target:
    name: str
    component: str
    path: str
    kind: str
    conv_block: bool  # inside ResnetBlock2D/Downsample2D/Upsample2D (LoCon only)
    module: Any = field(repr=False)

    @property
    def in_dim(self) -> int:
        return self.module.in_features if self.kind == "linear" else self.module.in_channels

    @property
    def out_dim(self) -> int:
        return self.module.out_features if self.kind == "linear" else self.module.out_channels

    @property
    def kernel(self) -> tuple[int, ...]:
        return () if self.kind == "linear" else tuple(self.module.kernel_size)


# ------------------------------------------------------------------------ targets


def _is_lora_layer(module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def find_targets(
    unet, text_encoders: list, family: str, *, include_conv_blocks: bool = True
) -> dict[str, _Target]:
    """Every module sd-scripts can put a LoRA on, keyed by its kohya name.

    Transformer-block and text-encoder layers always; the layers of
    ResnetBlock2D/Downsample2D/Upsample2D (``conv_block=True``) when
    ``include_conv_blocks``."""
    import torch

    family = normalize_family(family)
    targets: dict[str, _Target] = {}

    def collect(root, component: str, block_types: tuple[str, ...], conv_block: bool, namer) -> None:
        for block_path, block in root.named_modules():
            if type(block).__name__ not in block_types:
                continue
            for child_path, child in block.named_modules():
                if _is_lora_layer(child):
                    raise ValueError(
                        "the model already has LoRA layers injected; load a fresh copy of the base model"
                    )
                if isinstance(child, torch.nn.Linear):
                    kind = "linear"
                elif isinstance(child, torch.nn.Conv2d):
                    kind = "conv1x1" if tuple(child.kernel_size) == (1, 1) else "conv"
                else:
                    continue
                path = f"{block_path}.{child_path}" if child_path else block_path
                name = namer(path)
                if name is None or name in targets:
                    continue
                targets[name] = _Target(name, component, path, kind, conv_block, child)

    fam = get_family(family)
    if unet is not None:
        unet_namer = fam.unet_lora_namer(unet.config)
        collect(unet, "unet", fam.lora_unet_blocks, False, unet_namer)
        if include_conv_blocks:
            collect(unet, "unet", fam.lora_unet_conv_blocks, True, unet_namer)
    count = len(text_encoders)
    for i, te in enumerate(text_encoders):
        prefix = text_encoder_prefix(i, count)
        component = prefix[len("lora_") :]
        collect(te, component, fam.lora_text_encoder_blocks, False, fam.text_encoder_lora_namer(i, count))
    return targets


def _check_against_target(name: str, mod: _FileModule, t: _Target) -> str | None:
    """None when the file's module fits the layer, else what does not match."""
    down, up = tuple(mod.down.shape), tuple(mod.up.shape)
    if t.kind == "linear" or t.kernel == (1, 1):
        ok_down = down[1] == t.in_dim and (len(down) == 2 or down[2:] == (1, 1))
    else:
        ok_down = len(down) == 4 and down[1] == t.in_dim and down[2:] == t.kernel
    ok_up = up[0] == t.out_dim
    if ok_down and ok_up:
        return None
    if t.kind == "linear":
        want = f"a Linear {t.in_dim} -> {t.out_dim}"
    else:
        want = f"a Conv2d {t.in_dim} -> {t.out_dim}, kernel {'x'.join(map(str, t.kernel))}"
    return f"{name}: lora_down {list(down)} / lora_up {list(up)} do not fit the model's layer ({want})"


def _reshape_like(tensor, like):
    if tuple(tensor.shape) == tuple(like.shape):
        return tensor
    return tensor.reshape(like.shape)


# ------------------------------------------------------------------------ network


class LoRANetwork:
    """LoRA layers injected (with peft) into a U-Net and its text encoders, named
    and saved as sd-scripts does.  Build it with :meth:`create`."""

    def __init__(self, family: str, unet, text_encoders: list, modules: list[LoRAModule],
                 train_unet: bool, train_text_encoder: bool):
        self.family = family
        self.unet = unet
        self.text_encoders = text_encoders
        self.modules = modules
        self.train_unet = train_unet
        self.train_text_encoder = train_text_encoder
        self._by_name = {m.name: m for m in modules}
        self._layout: dict = {}  # fused modules: saved name -> its parts (engine.lora_fused)
        self.deferred: list[tuple[str, str, str, int, float]] = []  # (component, path, kind, rank, alpha): see defer

    # ---------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        unet,
        text_encoders: Iterable | None,
        family: str,
        *,
        rank: int,
        alpha: float | None,
        conv_rank: int | None = None,
        conv_alpha: float | None = None,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        weights: str | Path | None = None,
        target_filter=None,
        defer=None,
    ) -> LoRANetwork:
        """Inject LoRA layers and return the network.

        ``family``: ``sd1``, ``sd2`` or ``sdxl`` (``sd15``/``sd2-v`` accepted).
        ``conv_rank`` set = LoCon (3x3 convs of ResNet/down/up blocks too).
        ``weights``: continue from a kohya-format LoRA file; each module takes
        its rank and alpha from the file.  A part (U-Net, a text encoder) the
        file has no module for gets fresh modules from ``rank``/``alpha`` if it
        is trained.  Modules of parts that are not trained are kept (frozen) so
        that the saved file loses nothing.  Raises LoRAWeightsError when the
        file cannot be read or does not fit the model.
        ``alpha`` None or 0 means alpha = rank (no scaling), as in sd-scripts;
        ``conv_alpha`` defaults to 1 like sd-scripts' conv_alpha.
        ``target_filter``: a predicate on kohya names choosing the fresh modules
        (SD3/FLUX: train_blocks, train_t5xxl).
        ``defer(component, model, [(path, rank, alpha)])``: the paths of those
        not to inject now (the estimate's copies of a block; listed in ``deferred``).
        The base models are frozen (requires_grad False); only the LoRA
        parameters of the trained parts require gradients afterwards.
        """
        import torch

        family = normalize_family(family)
        text_encoders = list(text_encoders or [])
        if int(rank) < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        rank = int(rank)
        alpha = float(rank) if not alpha else float(alpha)
        if conv_rank is not None:
            if int(conv_rank) < 1:
                raise ValueError(f"conv rank must be at least 1, got {conv_rank}")
            conv_rank = int(conv_rank)
            conv_alpha = 1.0 if conv_alpha is None else float(conv_alpha) or float(conv_rank)

        if not train_unet and not train_text_encoder:
            raise ValueError("nothing to train: enable train_unet or train_text_encoder")
        targets = find_targets(unet, text_encoders, family, include_conv_blocks=True)
        components = (["unet"] if unet is not None else []) + [
            text_encoder_prefix(i, len(text_encoders))[len("lora_") :] for i in range(len(text_encoders))
        ]

        def trained(component: str) -> bool:
            return train_unet if component == "unet" else train_text_encoder

        def default_plan(component: str) -> dict[str, tuple[int, float]]:
            plan = {}
            for t in targets.values():
                if t.component != component or (t.conv_block and conv_rank is None):
                    continue
                # As sd-scripts: in ResNet/down/up blocks only the kxk convs take the conv rank.
                plan[t.name] = (conv_rank, conv_alpha) if t.kind == "conv" else (rank, alpha)
            return plan

        keep = fam_filter(family, target_filter)
        targets_all, targets = targets, {n: t for n, t in targets.items() if keep(n)}
        plan: dict[str, tuple[int, float]] = {}
        file_sd = None
        if weights is not None and str(weights) != "":
            source = str(Path(weights).expanduser())
            file_sd, metadata = read_lora_file(weights)
            file_sd = split_fused(file_sd, part_layout({n: t.out_dim for n, t in targets_all.items()}))
            file_modules = parse_kohya_state_dict(file_sd, source)
            targets = {n: t for n, t in targets_all.items() if keep(n) or n in file_modules}
            _validate_file(file_modules, file_sd, metadata, targets, family, source)
            in_file = {targets[n].component for n in file_modules}
            for comp in components:
                if comp in in_file:
                    plan.update({n: (m.rank, m.alpha) for n, m in file_modules.items() if targets[n].component == comp})
                elif trained(comp):
                    plan.update(default_plan(comp))
        else:
            for comp in components:
                if trained(comp):
                    plan.update(default_plan(comp))

        for model in [unet, *text_encoders]:
            if model is not None:
                model.requires_grad_(False)
        modules: list[LoRAModule] = []
        deferred: list[tuple[str, str, str, int, float]] = []
        roots = {"unet": unet}
        for i, te in enumerate(text_encoders):
            roots[text_encoder_prefix(i, len(text_encoders))[len("lora_") :]] = te
        for comp in components:
            chosen = [t for t in targets.values() if t.component == comp and t.name in plan]
            if not chosen:
                continue
            specs = [(t.path, *plan[t.name]) for t in chosen]
            later = defer(comp, roots[comp], specs) if defer is not None else set()
            now = [s for s in specs if s[0] not in later]
            if now:
                _inject(roots[comp], now)
            for t in chosen:
                r, a = plan[t.name]
                if t.path in later:
                    deferred.append((comp, t.path, t.kind, r, a))
                    continue
                layer = roots[comp].get_submodule(t.path)
                modules.append(LoRAModule(t.name, comp, t.path, t.kind, r, a, layer))

        net = cls(family, unet, text_encoders, modules, train_unet, train_text_encoder)
        net.deferred = deferred
        net._layout = part_layout({t.name: t.out_dim for t in targets.values()})
        with torch.no_grad():
            for m in modules:
                m.down.float()
                m.up.float()
                torch.nn.init.kaiming_uniform_(m.down.weight, a=math.sqrt(5))
                torch.nn.init.zeros_(m.up.weight)
        if file_sd is not None:
            net.load_kohya_state_dict(file_sd, strict=False, source=str(Path(weights).expanduser()))
        net._set_trainable()
        return net

    def _set_trainable(self) -> None:
        for m in self.modules:
            flag = self.train_unet if m.component == "unet" else self.train_text_encoder
            m.down.weight.requires_grad_(flag)
            m.up.weight.requires_grad_(flag)

    # ---------------------------------------------------------------- reporting

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def module_names(self) -> list[str]:
        return [m.name for m in self.modules]

    @property
    def unet_modules(self) -> list[LoRAModule]:
        return [m for m in self.modules if m.component == "unet"]

    @property
    def text_encoder_modules(self) -> list[LoRAModule]:
        return [m for m in self.modules if m.component != "unet"]

    def rank_summary(self) -> dict[tuple[int, float], int]:
        """``{(rank, alpha): number of modules}``."""
        return dict(Counter((m.rank, m.alpha) for m in self.modules))

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in (self.parameters() if trainable_only else self._all_parameters()))

    # ---------------------------------------------------------------- parameters

    def _all_parameters(self) -> list:
        return [p for m in self.modules for p in (m.down.weight, m.up.weight)]

    def unet_parameters(self) -> list:
        """Trainable U-Net LoRA parameters ([] when the U-Net is not trained)."""
        if not self.train_unet:
            return []
        return [p for m in self.unet_modules for p in (m.down.weight, m.up.weight)]

    def text_encoder_parameters(self) -> list:
        """Trainable text-encoder LoRA parameters ([] when they are not trained)."""
        if not self.train_text_encoder:
            return []
        return [p for m in self.text_encoder_modules for p in (m.down.weight, m.up.weight)]

    def parameters(self) -> list:
        return self.unet_parameters() + self.text_encoder_parameters()

    # ---------------------------------------------------------------- state dict

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``{name.lora_down.weight, name.lora_up.weight, name.alpha}`` on the CPU,
        in ``dtype`` (alpha too, as sd-scripts saves it); float32 by default."""
        import torch

        if self._layout:
            return self._fused_state_dict(dtype)
        out: dict[str, torch.Tensor] = {}
        for m in self.modules:
            tensors = {
                "lora_down.weight": m.down.weight.detach(),
                "lora_up.weight": m.up.weight.detach(),
                "alpha": torch.tensor(float(m.alpha)),
            }
            for suffix, t in tensors.items():
                t = t.to("cpu")
                if dtype is not None:
                    t = t.to(dtype)
                out[f"{m.name}.{suffix}"] = t.contiguous().clone()
        return out

    def _fused_state_dict(self, dtype) -> dict:
        """The state dict with the parts of fused layers saved as sd-scripts' one module."""
        import torch

        raw = {}
        for m in self.modules:
            raw[f"{m.name}.lora_down.weight"] = m.down.weight.detach().to("cpu", torch.float32)
            raw[f"{m.name}.lora_up.weight"] = m.up.weight.detach().to("cpu", torch.float32)
            raw[f"{m.name}.alpha"] = torch.tensor(float(m.alpha))
        out = fuse_parts(raw)
        return {k: (v.to(dtype) if dtype is not None else v).contiguous().clone() for k, v in out.items()}

    @property
    def saved_module_names(self) -> list[str]:
        """The module names of the saved file (fused layers once)."""
        return list(dict.fromkeys(base_name(m.name) for m in self.modules))

    def load_kohya_state_dict(self, sd: Mapping[str, torch.Tensor], *, strict: bool = True,
                              source: str = "LoRA") -> list[str]:
        """Copy a kohya-format state dict into the injected layers.  Every
        module of ``sd`` must exist in this network with the same rank and
        alpha and fitting shapes; with ``strict`` every module of the network
        must be in ``sd``.  Returns the names loaded.  LoRAWeightsError
        otherwise (nothing is changed then)."""
        import torch

        if self._layout:
            sd = split_fused(sd, self._layout)
        file_modules = parse_kohya_state_dict(sd, source)
        unknown = [n for n in file_modules if n not in self._by_name]
        if unknown:
            raise LoRAWeightsError(
                f"{source}: {len(unknown)} module(s) are not in this network, e.g. {unknown[0]}"
                + _family_hint(sd, {}, self.family)
            )
        problems = []
        for n, fm in file_modules.items():
            m = self._by_name[n]
            if fm.rank != m.rank:
                problems.append(f"{n}: rank {fm.rank} in the file, {m.rank} in the network")
                continue
            if not math.isclose(fm.alpha, m.alpha, rel_tol=1e-3, abs_tol=1e-6):
                problems.append(f"{n}: alpha {fm.alpha:g} in the file, {m.alpha:g} in the network")
                continue
            if fm.down.numel() != m.down.weight.numel() or fm.up.numel() != m.up.weight.numel():
                problems.append(
                    f"{n}: lora_down {list(fm.down.shape)} / lora_up {list(fm.up.shape)} do not fit "
                    f"{list(m.down.weight.shape)} / {list(m.up.weight.shape)}"
                )
        if strict:
            missing = [m.name for m in self.modules if m.name not in file_modules]
            if missing:
                problems.append(f"{len(missing)} module(s) of the network are missing from the file, e.g. {missing[0]}")
        if problems:
            raise LoRAWeightsError(f"{source}: does not match the network: " + "; ".join(problems[:3])
                                   + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
        with torch.no_grad():
            for n, fm in file_modules.items():
                m = self._by_name[n]
                m.down.weight.copy_(_reshape_like(fm.down, m.down.weight).to(m.down.weight.dtype))
                m.up.weight.copy_(_reshape_like(fm.up, m.up.weight).to(m.up.weight.dtype))
        return list(file_modules)

    def save(self, path: str | Path, metadata: Mapping[str, Any] | None = None,
             dtype: torch.dtype | None = None) -> Path:
        """Write the kohya-format ``.safetensors`` atomically (temporary file,
        fsync, rename) and return its path.  ``dtype``: a torch dtype or
        ``fp16``/``bf16``/``fp32`` (None: fp32).  Metadata values that are not
        strings are written as sd-scripts does: dicts/lists as JSON, the rest
        with ``str()``.  When ``ss_*`` metadata is given, ``sshs_model_hash``
        and ``sshs_legacy_hash`` are added as sd-scripts does."""
        from safetensors.torch import save_file

        from loratui.engine.fsutil import atomic_save

        sd = self.kohya_state_dict(as_dtype(dtype))
        meta = {str(k): _meta_str(v) for k, v in (metadata or {}).items()}
        if any(k.startswith("ss_") for k in meta):
            from loratui.engine.metadata import finalize_metadata

            meta = finalize_metadata(sd, meta)
        return atomic_save(path, lambda tmp: save_file(sd, str(tmp), metadata=meta or None))

    # ---------------------------------------------------------------- training helpers

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing of the base models that keeps LoRA gradients:
        non-reentrant checkpointing (the reentrant kind returns no gradient for
        LoRA layers when the block's inputs are frozen, as in the text
        encoder)."""
        if self.unet is not None:
            self.unet.enable_gradient_checkpointing()
        for te in self.text_encoders:
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def fam_filter(family: str, target_filter):
    """The predicate choosing fresh modules: ``target_filter`` or all."""
    return target_filter if target_filter is not None else (lambda name: True)


def _inject(model, specs: list[tuple[str, int, float]]) -> None:
    """peft LoRA on exactly the module paths in ``specs`` [(path, rank, alpha)],
    with the most common rank/alpha as default and the others as patterns."""
    from peft import LoraConfig, inject_adapter_in_model

    r0, _ = Counter(r for _, r, _ in specs).most_common(1)[0]
    a0, _ = Counter(a for _, _, a in specs).most_common(1)[0]

    def patterns(values: dict[str, Any], default) -> dict[str, Any]:
        groups: dict[Any, list[str]] = {}
        for path, v in values.items():
            if v != default:
                groups.setdefault(v, []).append(path)
        return {"(?:" + "|".join(re.escape(p) for p in paths) + ")": v for v, paths in groups.items()}

    config = LoraConfig(
        r=r0,
        lora_alpha=a0,
        target_modules="(?:" + "|".join(re.escape(p) for p, _, _ in specs) + ")",
        rank_pattern=patterns({p: r for p, r, _ in specs}, r0),
        alpha_pattern=patterns({p: a for p, _, a in specs}, a0),
        lora_dropout=0.0,
        init_lora_weights=True,
        bias="none",
    )
    # a model on the meta device (plans, estimates) gets its LoRA weights there too, uninitialised: a full-size
    # SDXL's 722 modules inject ~0.5 s faster, and no weight of a meta model has a value anyway
    on_meta = next(model.parameters()).is_meta
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=on_meta)
    if not on_meta:
        _float32_adapters(model)


def _float32_adapters(model) -> None:
    """peft gives an adapter its base layer's dtype and upcasts only fp16/bf16 ones back: on a
    float8 base layer (an fp8 file read for an fp8 base) the LoRA would train in fp8. Such
    adapters become float32 and are initialised again there (kaiming down, zero up), so their
    start is not an fp8-rounded one."""
    import torch
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if not isinstance(m, LoraLayer) or ADAPTER_NAME not in m.lora_A:
            continue
        if m.lora_A[ADAPTER_NAME].weight.dtype.itemsize == 1:
            m.lora_A[ADAPTER_NAME].to(torch.float32)
            m.lora_B[ADAPTER_NAME].to(torch.float32)
            m.reset_lora_parameters(ADAPTER_NAME, True)



def _validate_file(file_modules: dict[str, _FileModule], sd, metadata, targets: dict[str, _Target],
                   family: str, source: str) -> None:
    unknown = [n for n in file_modules if n not in targets]
    if unknown:
        raise LoRAWeightsError(
            f"{source}: {len(unknown)} of its {len(file_modules)} modules do not exist in this "
            f"{family_label(family)} model (e.g. {unknown[0]})" + _family_hint(sd, metadata, family)
        )
    mismatched = [msg for n, fm in file_modules.items() if (msg := _check_against_target(n, fm, targets[n]))]
    if mismatched:
        raise LoRAWeightsError(
            f"{source}: {len(mismatched)} module(s) do not fit this {family_label(family)} model, e.g. "
            f"{mismatched[0]}" + _family_hint(sd, metadata, family)
        )

