from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the estimator's per-configuration cache (estimates.json): never the user's own
os.environ.setdefault("LORATUI_CACHE_DIR", tempfile.mkdtemp(prefix="loratui-test-cache-"))

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread (the suite runs 2 workers on 2 cores):
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module that trains them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory) -> Path:
    """A tiny SD 1.x-shaped diffusers folder (random weights), built once."""
    from loratui.engine.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd1") / "model", "sd1")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny SDXL-shaped diffusers folder (random weights), built once."""
    from loratui.engine.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model", "sdxl")


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """A tiny FLUX.1-shaped diffusers folder (random weights), built once."""
    from loratui.engine.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-flux") / "model", "flux")


@pytest.fixture
def synthetic_dataset(tmp_path) -> Path:
    """images/4_shapes with 6 captioned 64×64 PNGs."""
    from loratui.engine.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "images")
