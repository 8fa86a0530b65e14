"""GPU telemetry from NVML (the ``pynvml`` module of nvidia-ml-py).

    mon = GpuMonitor()
    mon.sample()      # [GpuSample, ...]; [] on a machine without an NVIDIA GPU
    mon.reason        # why there is none ("no NVIDIA driver", ...), "" when there is one
    mon.describe()    # "NVIDIA H100 80GB HBM3 · 80 GB" or "no GPU"

Nothing here raises: a missing library, a missing driver, a GPU that does not
report its power — each becomes ``None`` or an empty list.  Sampling costs a few
milliseconds of driver calls; the UI calls it from a worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

GB = 1024**3


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util: int | None  # % of time a kernel ran
    mem_used: int | None  # bytes
    mem_total: int | None  # bytes
    temp: int | None  # °C
    power: float | None  # W
    power_limit: float | None  # W

    @property
    def mem_fraction(self) -> float | None:
        if self.mem_used is None or not self.mem_total:
            return None
        return self.mem_used / self.mem_total

    def short_name(self) -> str:
        """'H100 80GB HBM3' from 'NVIDIA H100 80GB HBM3'."""
        name = self.name
        for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
            name = name.removeprefix(prefix)
        return name


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuMonitor:
    """Lazily initialised NVML reader; thread-safe."""

    def __init__(self, nvml: Any = None):
        self._nvml = nvml  # the pynvml module, or an object with the same functions
        self._lock = threading.Lock()
        self._handles: list[Any] | None = None
        self.reason = ""

    def _init(self) -> list[Any]:
        if self._handles is not None:
            return self._handles
        self._handles = []
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except Exception:  # not installed, or broken
                self.reason = "no GPU (nvidia-ml-py is not installed)"
                return self._handles
            self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._handles = []
            self.reason = f"no GPU ({_nvml_reason(exc)})"
            return self._handles
        if not self._handles:
            self.reason = "no GPU (the NVIDIA driver sees no device)"
        return self._handles

    @property
    def available(self) -> bool:
        with self._lock:
            return bool(self._init())

    def sample(self) -> list[GpuSample]:
        with self._lock:
            handles = self._init()
            nvml = self._nvml
            out = []
            for i, h in enumerate(handles):
                name = _call(lambda: _text(nvml.nvmlDeviceGetName(h))) or f"GPU {i}"
                util = _call(lambda: int(nvml.nvmlDeviceGetUtilizationRates(h).gpu))
                mem = _call(lambda: nvml.nvmlDeviceGetMemoryInfo(h))
                temp = _call(lambda: int(nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))))
                power = _call(lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)  # mW
                limit = _call(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
                out.append(
                    GpuSample(
                        index=i,
                        name=name,
                        util=util,
                        mem_used=int(mem.used) if mem is not None else None,
                        mem_total=int(mem.total) if mem is not None else None,
                        temp=temp,
                        power=power,
                        power_limit=limit,
                    )
                )
            return out

    def describe(self) -> str:
        """One line for a header: 'H100 80GB HBM3 · 80 GB' (first GPU, '+N' more) or the reason."""
        samples = self.sample()
        if not samples:
            return self.reason or "no GPU"
        s = samples[0]
        text = s.short_name()
        if s.mem_total:
            text += f" · {s.mem_total / GB:.0f} GB"
        if len(samples) > 1:
            text += f" (+{len(samples) - 1})"
        return text

    def close(self) -> None:
        with self._lock:
            if self._handles:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
            self._handles = None


def _call(fn):
    try:
        return fn()
    except Exception:  # NVMLError_NotSupported and friends: that metric is unknown
        return None


def _nvml_reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "LibraryNotFound" in name:
        return "no NVIDIA driver library"
    if "DriverNotLoaded" in name:
        return "the NVIDIA driver is not loaded"
    if "NoPermission" in name:
        return "no permission to read the GPU"
    text = str(exc).strip()
    return text or name


_default: GpuMonitor | None = None
_default_lock = threading.Lock()


def default_monitor() -> GpuMonitor:
    """One process-wide monitor (NVML is initialised once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = GpuMonitor()
        return _default
