"""The four top-level folders install as loratui.engine / .tui / .screens / .profiles."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"engine": "loratui.engine", "tui": "loratui.tui", "screens": "loratui.screens", "profiles": "loratui.profiles"}


def _config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_loratui():
    listed = set(_config()["packages"])
    on_disk = set()
    for root, name in ROOTS.items():
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root).parts
            if "__pycache__" not in rel:
                on_disk.add(".".join((name, *rel)))
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "these are listed but have no __init__.py"


def test_no_top_level_name_but_loratui():
    cfg = _config()
    assert set(cfg["package-dir"]) == set(ROOTS.values())
    assert all(p.startswith("loratui.") for p in cfg["packages"])


def test_the_package_is_importable_under_its_one_name():
    import loratui.engine.registries as registries

    assert Path(registries.__file__).resolve().parent == (REPO / "engine").resolve()
