"""Regularisation of the LoRA network while it trains, with sd-scripts' meaning
(networks/lora.py):

- ``network.network_dropout``: dropout on each module's rank activations (the output of
  lora_down), only in a forward pass that records gradients (never while sampling);
- ``network.rank_dropout``: per sample, each rank of a module is dropped with this
  probability and the kept ones scaled by ``1 / (1 - p)`` (sd-scripts' ``rank_dropout``
  network_arg: "as if the rank were changed");
- ``network.module_dropout``: per forward, each whole module is skipped with this
  probability: its output is the base layer's alone and its parameters get no gradient
  that step (sd-scripts' ``module_dropout``). All three draw from torch's RNG, as
  sd-scripts does, which the resume state keeps;
- ``network.scale_weight_norms``: max-norm after each optimizer step. For every module the
  update ``ΔW = up·down·alpha/rank`` (a 3×3 convolution composed with its 1×1 up) has a
  Frobenius norm ``‖ΔW‖``; where it is above the limit both up and down are scaled by
  ``sqrt(limit / ‖ΔW‖)``. Reported: how many modules were scaled, the mean and the largest
  norm after scaling (sd-scripts' "keys scaled" / "average key norm" / max key norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def attach_dropout(network: Any, p: float, rank: float = 0.0, module: float = 0.0) -> list:
    """Dropout ``p`` on every module's lora_down output, rank dropout ``rank`` and module
    dropout ``module`` (see the module's docstring), as forward hooks; the hook handles.
    Only in a forward pass that records gradients (training), never while sampling."""
    import torch

    if not (p or rank or module):
        return []
    skipped: set[int] = set()  # the lora_downs skipped in the current forward of their model

    def down_hook(mod, inputs, out):
        if not torch.is_grad_enabled() or (module and id(mod) in skipped):
            return out
        if p:
            out = torch.nn.functional.dropout(out, p=p, training=True)
        if rank:
            keep = torch.rand((out.size(0), out.size(1) if out.ndim == 4 else out.size(-1)), device=out.device) > rank
            keep = keep.to(out.dtype) / (1.0 - rank)
            if out.ndim == 3:  # text encoder: (batch, tokens, rank)
                keep = keep.unsqueeze(1)
            elif out.ndim == 4:  # convolution: (batch, rank, h, w)
                keep = keep[:, :, None, None]
            out = out * keep
        return out

    def up_hook_for(down):
        def up_hook(mod, inputs, out):
            # a fresh zero tensor: neither up nor down is in the graph, so their gradients stay None
            return torch.zeros_like(out) if torch.is_grad_enabled() and id(down) in skipped else out
        return up_hook

    handles = []
    # a LyCORIS network has its own rank/module dropout (lycoris_checks warns that network_dropout does nothing there)
    for m in network.modules:
        if not hasattr(m, "down"):
            continue
        down = m.down
        handles.append(down.register_forward_hook(down_hook))
        if module:
            handles.append(m.up.register_forward_hook(up_hook_for(down)))
    return handles + (_attach_module_dropout(network, module, skipped) if module else [])


def _attach_module_dropout(network: Any, module: float, skipped: set[int]) -> list:
    """At the start of each forward (recording gradients) of a model holding LoRA modules,
    one draw per saved module decides which are skipped in that forward: a recomputed
    checkpoint segment reuses the decision, and the parts of a fused module (FLUX/SD3 qkv,
    engine.lora_fused) are skipped together, as the one module sd-scripts trains."""
    import torch

    from loratui.engine.lora_fused import base_name

    roots = [r for r in (getattr(network, "unet", None), *getattr(network, "text_encoders", ())) if r is not None]
    handles = []
    for root in roots:
        inside = {id(x) for x in root.modules()}
        groups: dict[str, list[int]] = {}
        for m in network.modules:
            if hasattr(m, "down") and id(m.down) in inside:
                groups.setdefault(base_name(m.name), []).append(id(m.down))
        if not groups:
            continue

        def draw(mod, args, groups=groups):
            if not torch.is_grad_enabled():
                return
            for ids, u in zip(groups.values(), torch.rand(len(groups)).tolist()):
                (skipped.update if u < module else skipped.difference_update)(ids)

        handles.append(root.register_forward_pre_hook(draw))
    return handles


@dataclass(frozen=True)
class NormFigures:
    keys_scaled: int
    mean_norm: float
    max_norm: float


def delta_weight(down, up, scale: float):
    """The module's weight update ``up·down·scale`` (float32), shaped like the base weight."""
    import torch

    down, up = down.float(), up.float()
    if down.ndim == 2:
        return up @ down * scale
    if down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * scale
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def apply_max_norm(network: Any, limit: float) -> NormFigures:
    """Scale down every module whose update's norm is above ``limit`` (in place)."""
    import torch

    lycoris = getattr(getattr(network, "net", None), "apply_max_norm_regularization", None)
    if lycoris is not None:  # a LyCORIS network: each algorithm's own max-norm (as sd-scripts calls it)
        with torch.no_grad():
            keys, mean, top = lycoris(limit, next(network.net.parameters()).device)
        return NormFigures(int(keys), float(mean), float(top))
    scaled, norms = 0, []
    with torch.no_grad():
        for m in network.modules:
            down, up = m.down.weight, m.up.weight
            raw = delta_weight(down, up, m.scale).norm()
            norm = raw.clamp(min=limit / 2)
            ratio = float(torch.clamp(norm, max=limit) / norm)
            if ratio != 1:
                scaled += 1
                down.mul_(ratio**0.5)
                up.mul_(ratio**0.5)
            norms.append(float(raw) * ratio)
    return NormFigures(scaled, sum(norms) / len(norms) if norms else 0.0, max(norms, default=0.0))
