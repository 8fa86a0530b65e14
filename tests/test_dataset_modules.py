"""The dataset code's seams: one concept-folder pattern used by the scan and the
inspection, and no import cycle between the dataset package and the latent cache
(either can be imported first, and the latent cache never loads the package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratui.engine.dataset import CONCEPT_DIR_RE, parse_concept_dir, scan_dataset
from loratui.engine.inspection import InspectError, find_concept, inspect_dataset, parse_concept_folder
from loratui.engine.schema import DatasetSettings


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("10_mychar", (10, "mychar")),
        ("5_other style", (5, "other style")),
        ("1_a_b", (1, "a_b")),
        ("10_", (10, "")),
        ("0_x", (0, "x")),
        ("-1_x", (-1, "x")),
        ("10_two\nlines", (10, "two\nlines")),
        ("mychar", None),
        ("x_10", None),
        ("_10", None),
        ("10mychar", None),
    ],
)
def test_parse_concept_dir(name, parsed):
    assert parse_concept_dir(name) == parsed
    assert (CONCEPT_DIR_RE.match(name) is not None) == (parsed is not None)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(path)


def test_scan_and_inspection_read_folder_names_alike(tmp_path):
    root = tmp_path / "img"
    _image(root / "3_my char" / "a.png")
    _image(root / "0_never" / "b.png")
    _image(root / "plain" / "c.png")
    scan = scan_dataset(DatasetSettings(train_data_dir=str(root), resolution=64))
    assert [(c.repeats, c.name) for c in scan.report.concepts] == [(3, "my char")]
    assert any("0_never" in p and "repeats is 0" in p for p in map(str, scan.report.problems))
    assert any("plain has no <repeats>_ number prefix" in w for w in map(str, scan.report.warnings))
    assert parse_concept_folder(root / "3_my char") == (3, "my char")
    assert find_concept(root, "my char") == root / "3_my char"
    with pytest.raises(InspectError, match="no <repeats>_ prefix"):
        parse_concept_folder(root / "plain")
    insp = inspect_dataset(root, resolution=64, decode=False)
    assert [(c.folder_name, c.repeats) for c in insp.concepts] == [("3_my char", 3)]


@pytest.mark.parametrize(
    "first, second",
    [("loratui.engine.latent_cache", "loratui.engine.dataset"), ("loratui.engine.dataset", "loratui.engine.latent_cache")],
)
def test_dataset_and_latent_cache_import_in_either_order(first, second):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({first!r})\n"
        "loaded = 'loratui.engine.dataset' in sys.modules\n"
        f"importlib.import_module({second!r})\n"
        "from loratui.engine.dataset import cache_latents, load_image_tensor\n"
        "from loratui.engine.latent_cache import cache_latents as c2\n"
        "assert cache_latents is c2\n"
        "print('dataset loaded by the first import:', loaded)\n"
        "print('heavy:', sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if first.endswith("latent_cache"):
        assert "dataset loaded by the first import: False" in out.stdout  # the cache needs only engine.imagefile
    assert "heavy: []" in out.stdout  # nothing heavy at import time
