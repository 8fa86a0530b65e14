"""The GPU an estimate is for: the one NVML sees, or one chosen from a table.

Peaks are dense (no sparsity) tensor-core TFLOPS with fp32 accumulation, as
the vendors' data sheets give them; ``fp32`` is the plain fp32 rate (what a
run with mixed_precision = "no" gets: torch leaves TF32 off for matmuls).
``efficiency`` is the share of the peak a LoRA training step of a diffusion
model reaches at batch 1-4 (small kernels, launch gaps, the optimizer): a
stated rule of thumb, 0.2 (0.12 on H100/H200, whose peak small batches cannot
fill). Once a run trains, the dashboard's ETA uses the measured step times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GB = 1024**3


@dataclass(frozen=True)
class Device:
    name: str  # short name shown: "RTX 4090"
    vram: int  # bytes
    bf16_tflops: float  # dense, fp32 accumulate (fp16 where the card has no bf16)
    fp32_tflops: float
    bf16: bool = True  # has bf16 (T4 does not: bf16 runs fall back to fp16)
    efficiency: float = 0.2
    spellings: tuple[str, ...] = ()  # lower-case words that identify it in an NVML name
    measured: bool = False  # from NVML (this machine), not from the table

    def flops_per_s(self, precision: str) -> float:
        peak = self.fp32_tflops if precision == "no" else self.bf16_tflops
        return peak * 1e12 * self.efficiency


def _d(name, vram_gb, half, fp32, spell, **kw) -> Device:
    return Device(name, int(vram_gb * GB), half, fp32, spellings=spell, **kw)


DEVICES: tuple[Device, ...] = (
    _d("T4", 16, 65, 8.1, ("t4",), bf16=False),
    _d("A10G", 24, 70, 31.2, ("a10g",)),
    _d("A10", 24, 125, 31.2, ("a10",)),
    _d("L4", 24, 121, 30.3, ("l4",)),
    _d("RTX 3060", 12, 25.6, 12.7, ("3060",)),
    _d("RTX 3090", 24, 71, 35.6, ("3090",)),
    _d("RTX 4060 Ti", 16, 44, 22.1, ("4060 ti",)),
    _d("RTX 4080", 16, 97.5, 48.7, ("4080",)),
    _d("RTX 4090", 24, 165.2, 82.6, ("4090",)),
    _d("RTX 5090", 32, 209.5, 104.8, ("5090",)),
    _d("RTX A6000", 48, 154.8, 38.7, ("a6000",)),
    _d("A100 40GB", 40, 312, 19.5, ("a100 40", "a100 40gb", "a100 sxm4 40gb", "a100 pcie 40gb")),
    _d("A100 80GB", 80, 312, 19.5, ("a100 80", "a100 80gb", "a100 sxm4 80gb", "a100 pcie 80gb", "a100")),
    _d("L40S", 48, 362, 91.6, ("l40s",)),
    _d("H100", 80, 989, 67, ("h100",), efficiency=0.12),
    _d("H200", 141, 989, 67, ("h200",), efficiency=0.12),
)


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.lower().replace("nvidia", "").replace("geforce", "")).strip()


def find_device(name: str) -> Device | None:
    """The table's card for a name ("RTX 4090", "4090", "NVIDIA H100 80GB HBM3", "a100-80")."""
    key = _norm(name)
    if not key:
        return None
    for d in DEVICES:  # exact short names first
        if key == _norm(d.name):
            return d
    best = None
    for d in DEVICES:
        for s in d.spellings:
            if re.search(rf"(?<![a-z0-9]){re.escape(_norm(s))}(?![a-z0-9])", key) and (best is None or len(s) > best[0]):
                best = (len(s), d)
    return best[1] if best else None


def device_names() -> list[str]:
    return [d.name for d in DEVICES]


def vram_device(gb: float, like: Device | None = None) -> Device:
    """A card of ``gb`` GB (``--vram 8``): the speed of ``like`` (default RTX 4090's class)."""
    base = like or find_device("RTX 4090")
    assert base is not None
    return Device(f"{gb:g} GB card", int(gb * GB), base.bf16_tflops, base.fp32_tflops, base.bf16, base.efficiency)


def local_device(monitor=None) -> Device | None:
    """This machine's first GPU from NVML, with the table's speed for its kind
    (a card not in the table: RTX 4090's speed); None without one."""
    from loratui.engine.gpu import default_monitor

    samples = (monitor or default_monitor()).sample()
    if not samples:
        return None
    s = samples[0]
    known = find_device(s.name)
    base = known or find_device("RTX 4090")
    assert base is not None
    vram = s.mem_total or base.vram
    return Device(s.short_name(), int(vram), base.bf16_tflops, base.fp32_tflops, base.bf16, base.efficiency,
                  measured=True)
