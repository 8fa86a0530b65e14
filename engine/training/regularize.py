"""Regularisation of the LoRA network while it trains, with sd-scripts' meaning
(networks/lora.py):

- ``network.network_dropout``: dropout on each module's rank activations (the output of
  lora_down), only in a forward pass that records gradients (never while sampling);
- ``network.scale_weight_norms``: max-norm after each optimizer step. For every module the
  update ``ΔW = up·down·alpha/rank`` (a 3×3 convolution composed with its 1×1 up) has a
  Frobenius norm ``‖ΔW‖``; where it is above the limit both up and down are scaled by
  ``sqrt(limit / ‖ΔW‖)``. Reported: how many modules were scaled, the mean and the largest
  norm after scaling (sd-scripts' "keys scaled" / "average key norm" / max key norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def attach_dropout(network: Any, p: float) -> list:
    """Dropout of probability ``p`` on every module's lora_down output; the hook handles."""
    import torch

    if not p:
        return []

    def hook(module, inputs, output):
        return torch.nn.functional.dropout(output, p=p, training=torch.is_grad_enabled())

    # a LyCORIS network has its own rank/module dropout (lycoris_checks warns that this one does nothing there)
    return [m.down.register_forward_hook(hook) for m in network.modules if hasattr(m, "down")]


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
