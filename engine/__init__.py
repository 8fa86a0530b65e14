"""loratui's training engine: a library with no UI (never imports textual or rich)."""

import logging as _logging
import os as _os

# CUDA numbers GPUs fastest first by default; nvidia-smi, NVML and the users' gpu_ids
# (compute.gpu_ids, CUDA_VISIBLE_DEVICES) by PCI bus. Set before CUDA starts, so the two agree.
_os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

# bitsandbytes warns at import time on CPUs about an optional Hub kernel it
# cannot fetch; that is noise to our users (we never use its 4-bit CPU path).
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)


def quiet_libraries() -> None:
    """Silence library progress bars and advice aimed at developers; our own
    events say what is happening."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import diffusers.utils.logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass
