"""engine/ is a library: it must never import textual or rich (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def engine_modules() -> list[str]:
    return sorted(
        "loratui.engine." + ".".join(p.relative_to(ENGINE).with_suffix("").parts[: -1 if p.name == "__init__.py" else None])
        for p in ENGINE.rglob("*.py")
        if p.parent != ENGINE or p.name != "__init__.py"
    )


def test_there_are_engine_modules():
    mods = engine_modules()
    assert "loratui.engine.schema" in mods and "loratui.engine.events" in mods


def test_no_engine_module_imports_textual_or_rich():
    # One interpreter imports every engine module, then lists UI modules that got loaded.
    code = (
        "import importlib, sys\n"
        f"for m in {engine_modules()!r}:\n"
        "    importlib.import_module(m)\n"
        "    bad = [x for x in ('textual', 'rich') if x in sys.modules]\n"
        "    if bad:\n"
        "        print(m, 'imports', bad); sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_the_check_catches_a_ui_import(tmp_path):
    # The same check, on a module that does import textual, must fail.
    (tmp_path / "leaky.py").write_text("import textual\n")
    code = "import sys, leaky; sys.exit(1 if 'textual' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 1
