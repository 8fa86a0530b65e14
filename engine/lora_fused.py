"""Fused LoRA modules: where the model in memory keeps layers apart that sd-scripts' model
has as one (FLUX/SD3 ``qkv``, FLUX ``linear1`` = q, k, v and the MLP input).

Inside the network such a part has the internal name ``<saved name>#<k>`` (part k, in the
order of the fused layer's output rows); ``<saved name>#s`` is a layer whose output rows
are the fused layer's with its two halves swapped (diffusers' scale/shift order of SD3's
last context adaLN). The saved file has the one module sd-scripts writes:

- down = the parts' downs stacked (rank = the sum of their ranks);
- up = block-diagonal, each part's up in its rows and its columns, scaled by its own
  scale over the first part's; alpha = the first part's scale × the fused rank.

So ``scale · up @ down`` of the fused module is exactly the parts' deltas stacked. A
file's fused module is split back the same way (or, when its up is not block-diagonal,
as sd-scripts itself trains it, each part with the whole down and its rows of up).
"""

from __future__ import annotations

from collections.abc import Mapping

SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


def base_name(name: str) -> str:
    return name.split("#", 1)[0]


def is_part(name: str) -> bool:
    return "#" in name


def _swap_halves(t):
    import torch

    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def fuse(sd: Mapping[str, object]) -> dict:
    """A network state dict with internal part names -> the saved layout (float32 in, float32 out)."""
    import torch

    groups: dict[str, list[tuple[str, str]]] = {}
    for key in sd:
        name = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        if is_part(name):
            tag = name.split("#", 1)[1]
            groups.setdefault(base_name(name), [])
            if (name, tag) not in groups[base_name(name)]:
                groups[base_name(name)].append((name, tag))
    if not groups:
        return dict(sd)
    out: dict = {}
    done: set[str] = set()
    for key, value in sd.items():
        name = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        if not is_part(name):
            out[key] = value
            continue
        base = base_name(name)
        if base in done:
            continue
        done.add(base)
        parts = groups[base]
        if parts[0][1] == "s":
            out[f"{base}.lora_down.weight"] = sd[f"{name}.lora_down.weight"]
            out[f"{base}.lora_up.weight"] = _swap_halves(sd[f"{name}.lora_up.weight"])
            out[f"{base}.alpha"] = sd[f"{name}.alpha"]
            continue
        parts = sorted(parts, key=lambda p: int(p[1]))
        downs = [sd[f"{n}.lora_down.weight"] for n, _ in parts]
        ups = [sd[f"{n}.lora_up.weight"] for n, _ in parts]
        alphas = [float(sd[f"{n}.alpha"]) for n, _ in parts]
        ranks = [d.shape[0] for d in downs]
        scales = [a / r for a, r in zip(alphas, ranks)]
        total = sum(ranks)
        up = torch.zeros((sum(u.shape[0] for u in ups), total), dtype=ups[0].dtype)
        row = col = 0
        for u, r, s in zip(ups, ranks, scales):
            up[row : row + u.shape[0], col : col + r] = u * (s / scales[0])
            row, col = row + u.shape[0], col + r
        alpha_t = sd[f"{parts[0][0]}.alpha"]
        out[f"{base}.lora_down.weight"] = torch.cat(downs, dim=0)
        out[f"{base}.lora_up.weight"] = up
        out[f"{base}.alpha"] = torch.tensor(scales[0] * total, dtype=alpha_t.dtype)
    return out


def part_layout(names_and_dims: Mapping[str, int]) -> dict[str, list[tuple[str, int]]]:
    """{saved name: [(internal name, output rows), ...]} of the parts among ``names_and_dims``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name, dim in names_and_dims.items():
        if is_part(name):
            out.setdefault(base_name(name), []).append((name, dim))
    for parts in out.values():
        parts.sort(key=lambda p: -1 if p[0].endswith("#s") else int(p[0].split("#", 1)[1]))
    return out


def split(sd: Mapping[str, object], layout: Mapping[str, list[tuple[str, int]]]) -> dict:
    """A saved file's state dict -> internal part names (modules not in ``layout`` as they are)."""
    import torch

    out: dict = {}
    for key, value in sd.items():
        name = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        if name not in layout or not key.endswith("lora_down.weight"):
            if name not in layout:
                out[key] = value
            continue
        parts = layout[name]
        down, up = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"]
        alpha = sd.get(f"{name}.alpha", torch.tensor(float(down.shape[0])))
        if parts[0][0].endswith("#s"):
            out.update({f"{parts[0][0]}.lora_down.weight": down, f"{parts[0][0]}.lora_up.weight": _swap_halves(up),
                        f"{parts[0][0]}.alpha": alpha})
            continue
        n, rank = len(parts), down.shape[0]
        dims = [d for _, d in parts]
        if up.shape[0] != sum(dims):
            out.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha})
            continue  # does not fit: left for the shape check to report under its saved name
        sparse = rank % n == 0 and _block_diagonal(up, dims, rank // n)
        row = 0
        for i, (part, dim) in enumerate(parts):
            if sparse:
                r = rank // n
                out[f"{part}.lora_down.weight"] = down[i * r : (i + 1) * r].contiguous()
                out[f"{part}.lora_up.weight"] = up[row : row + dim, i * r : (i + 1) * r].contiguous()
                out[f"{part}.alpha"] = torch.tensor(float(alpha) / n, dtype=alpha.dtype)
            else:
                out[f"{part}.lora_down.weight"] = down.clone()
                out[f"{part}.lora_up.weight"] = up[row : row + dim].contiguous()
                out[f"{part}.alpha"] = alpha.clone()
            row += dim
    return out


def _block_diagonal(up, dims: list[int], r: int) -> bool:
    row = 0
    for i, dim in enumerate(dims):
        block = up[row : row + dim]
        mask_cols = [c for c in range(up.shape[1]) if not (i * r <= c < (i + 1) * r)]
        if mask_cols and bool(block[:, mask_cols].abs().sum() != 0):
            return False
        row += dim
    return True
