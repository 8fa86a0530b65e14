"""GPU telemetry (engine/gpu.py): NVML read cleanly, and "no GPU" without errors.

This machine has no NVIDIA driver, so the real library path is the "no GPU" one;
the readings are checked against an object that answers like NVML does
(nvidia-ml-py's function names, units and NVMLError_* exception names).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from loratui.engine.gpu import GB, GpuMonitor, default_monitor


def test_the_real_library_never_raises():
    mon = GpuMonitor()
    samples = mon.sample()
    assert isinstance(samples, list)
    if not samples:  # a machine without an NVIDIA GPU
        assert mon.reason.startswith("no GPU") and mon.describe() == mon.reason
        assert not mon.available
    else:
        assert samples[0].mem_total and mon.reason == ""
    mon.close()
    assert default_monitor() is default_monitor()


def test_gpu_module_imports_no_ui_and_no_torch():
    code = "import sys, engine.gpu; bad=[m for m in ('textual','rich','torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    pass


class FakeNVML:
    """Two GPUs; the second does not report power (as many consumer cards)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2, init_error: Exception | None = None):
        self.count = count
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self):  # noqa: N802
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):  # noqa: N802
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return [b"NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 3060"][h]

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=[87, 3][h], memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return SimpleNamespace(used=[21 * GB, 1 * GB][h], total=[80 * GB, 12 * GB][h], free=0)

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return [64, 41][h]

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        if h == 1:
            raise NVMLError_NotSupported("Not Supported")
        return 412_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):  # noqa: N802
        if h == 1:
            raise NVMLError_NotSupported("Not Supported")
        return 700_000


def test_readings_and_units():
    nvml = FakeNVML()
    mon = GpuMonitor(nvml=nvml)
    a, b = mon.sample()
    assert (a.name, a.util, a.temp) == ("NVIDIA H100 80GB HBM3", 87, 64)
    assert a.mem_used == 21 * GB and a.mem_total == 80 * GB and abs(a.mem_fraction - 21 / 80) < 1e-9
    assert a.power == 412.0 and a.power_limit == 700.0
    assert a.short_name() == "H100 80GB HBM3" and b.short_name() == "RTX 3060"
    assert b.power is None and b.power_limit is None and b.util == 3  # unsupported metric: None, not an error
    assert mon.describe() == "H100 80GB HBM3 · 80 GB (+1)" and mon.available and mon.reason == ""
    mon.close()
    assert nvml.shutdowns == 1


def test_no_driver_and_no_device_are_no_gpu():
    mon = GpuMonitor(nvml=FakeNVML(init_error=NVMLError_DriverNotLoaded("Driver Not Loaded")))
    assert mon.sample() == [] and mon.reason == "no GPU (the NVIDIA driver is not loaded)"
    assert mon.describe() == "no GPU (the NVIDIA driver is not loaded)"
    mon = GpuMonitor(nvml=FakeNVML(count=0))
    assert mon.sample() == [] and "sees no device" in mon.reason
