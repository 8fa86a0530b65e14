"""The estimate's LoRA, injected into one block of each kind.

peft takes ~2 ms a module, and a full-size SDXL U-Net has 722 LoRA targets, 700 of
them in 70 transformer blocks of four kinds (its text encoders: 264, in 44 layers
of two kinds). A block (an item of a ModuleList) that is a copy of an earlier
one, LoRA plan included, gets no LoRA up front: its count is replayed from the
first one's (``engine.estimate.replay``, keyed by the signature computed here,
before injection). Should a copy run for real (with other inputs, or with
replay off) its LoRA is injected first (``take``: a forward pre-hook, or the
text encoders' layer replay), so a count never misses a LoRA module. The LoRA's
parameter shapes come from the base layers, as peft would make them.
"""

from __future__ import annotations

from loratui.engine.estimate.replay import module_signature


class LazyLoRA:
    def __init__(self, train_unet: bool = True, train_text_encoder: bool = True):
        self.train_unet = train_unet
        self.train_text_encoder = train_text_encoder
        self.signatures: dict[int, tuple] = {}  # id(block) -> its signature with its LoRA plan
        self.pending: dict[int, tuple] = {}  # id(block) -> (block, [(path inside it, rank, alpha)], trained)
        self.shapes: list[tuple[tuple[int, ...], bool, bool]] = []  # the deferred LoRA's (shape, trained, zero)

    # -- before injection: LoRANetwork.create(defer=...)
    def defer(self, component: str, root, specs: list[tuple[str, int, float]]) -> set[str]:
        import torch

        trained = self.train_unet if component == "unet" else self.train_text_encoder
        items: dict[str, object] = {}
        for path, mod in root.named_modules():
            if isinstance(mod, torch.nn.ModuleList):
                for i, item in enumerate(mod):
                    items[f"{path}.{i}" if path else str(i)] = item
        under: dict[str, list[tuple[str, int, float]]] = {p: [] for p in items}
        for path, r, a in specs:
            parts = path.split(".")
            for n in range(1, len(parts)):
                prefix = ".".join(parts[:n])
                if prefix in under:
                    under[prefix].append((".".join(parts[n:]), r, a))
        first: set[tuple] = set()
        owner: dict[str, str] = {}  # LoRA target -> the innermost copy it lies in
        for path, item in items.items():  # named_modules order: outer blocks before inner ones
            sig = (module_signature(item), tuple(sorted(under[path])))
            self.signatures[id(item)] = sig
            if sig not in first:
                first.add(sig)
                continue
            for rel, _, _ in under[path]:
                owner[f"{path}.{rel}"] = path
        groups: dict[str, list] = {}
        for path, r, a in specs:
            if path in owner:
                block = owner[path]
                groups.setdefault(block, []).append((path[len(block) + 1:], r, a))
                self.shapes.extend(_lora_shapes(root.get_submodule(path), r, trained))
        for block, group in groups.items():
            item = items[block]
            self.pending[id(item)] = (item, group, trained)
        return set(owner)

    # -- during the count
    def take(self, block) -> list:
        """Inject ``block``'s deferred LoRA, if it has any: the new LoRA layers."""
        entry = self.pending.pop(id(block), None)
        return self._inject(*entry) if entry is not None else []

    def pre_hooks(self, on_run, skip=()):
        """Forward pre-hooks calling ``on_run(block)`` before a block with deferred
        LoRA runs (not on the blocks in ``skip``: their replay calls it)."""
        return [block.register_forward_pre_hook(lambda b, args: on_run(b))
                for key, (block, *_) in self.pending.items() if key not in skip]

    def _inject(self, block, specs, trained: bool) -> list:
        from loratui.engine.lora import ADAPTER_NAME, _inject

        _inject(block, specs)
        new = []
        for rel, _, _ in specs:
            layer = block.get_submodule(rel)
            for part in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
                part.float()
                part.weight.requires_grad_(trained)
                new.append(part)
        return new


def _lora_shapes(base, rank: int, trained: bool) -> list[tuple[tuple[int, ...], bool, bool]]:
    """(shape, trained, zero-initialised) of the down and up weights peft gives ``base``."""
    import torch

    if isinstance(base, torch.nn.Linear):
        down, up = (rank, base.in_features), (base.out_features, rank)
    elif isinstance(base, torch.nn.Conv2d):
        down, up = (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
    else:
        raise TypeError(f"no LoRA shape for {type(base).__name__}")
    return [(down, trained, False), (up, trained, True)]
