"""engine/ is a library: it never imports the UI (textual, rich, tui, screens),
not even inside a function; and no two project modules import each other,
directly or round a loop (DESIGN.md, issue 9 §4).

Both checks read the source (ast), so they see every import: at the top, inside
functions, ``from . import x``, ``from ..tui import app``, ``loratui.``-prefixed
or not.  Imports under ``if TYPE_CHECKING:`` never run and do not make a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui", "screens", "profiles")
UI = ("tui", "screens", "textual", "rich")


# --------------------------------------------------------------------------- reading imports


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """``{"engine.schema": path, "tui": path/__init__.py, ...}`` for the project's packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def normalise(name: str) -> str:
    """``loratui.engine.x`` and ``engine.x`` are the same module."""
    return name.removeprefix("loratui.") if name.startswith("loratui.") else name


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(mod: str, path: Path, *, type_checking: bool = False) -> list[tuple[str, int]]:
    """Every module ``path`` (the module ``mod``) imports, as absolute names without
    the ``loratui.`` prefix, with line numbers.  ``from x import y`` gives ``x`` and
    ``x.y`` (``y`` may be a module).  ``type_checking``: include imports under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = set() if type_checking else _type_checking_nodes(tree)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(normalise(a.name), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = normalise(node.module or "")
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
    return out


def ui_imports(root: Path = ROOT) -> list[str]:
    """``path:line imports X`` for each import of UI code by an engine module."""
    bad = []
    for mod, path in project_modules(root).items():
        if mod.split(".")[0] != "engine":
            continue
        for target, line in imports_of(mod, path, type_checking=True):
            if target.split(".")[0] in UI:
                bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return sorted(set(bad))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports (a name resolves to the longest
    project module it starts with; a package importing its own submodule is no edge)."""
    mods = project_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, _ in imports_of(mod, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (root / pkg).mkdir(exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return root


# --------------------------------------------------------------------------- the boundary


def test_there_are_engine_modules():
    mods = project_modules()
    assert "engine.schema" in mods and "engine.events" in mods and "engine.runstate" in mods
    assert "tui.app" in mods and "screens.dashboard" in mods


def test_no_engine_module_imports_ui_code_anywhere_in_its_source():
    assert ui_imports() == []


def test_the_source_check_catches_every_kind_of_ui_import(tmp_path):
    root = plant(tmp_path, {
        "engine/top.py": "import textual\n",
        "engine/inner.py": "def f():\n    from rich.text import Text\n    return Text\n",
        "engine/relative.py": "def f():\n    from ..tui import app\n",
        "engine/sub/__init__.py": "from ...screens import dashboard\n",
        "engine/prefixed.py": "import loratui.tui.app\n",
        "engine/hidden.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from loratui.screens.training import X\n",
        "engine/clean.py": "import json\nfrom . import top\nfrom loratui.engine import clean\n",
    })
    bad = ui_imports(root)
    for where in ("engine/top.py:1 imports textual", "engine/inner.py:2 imports rich.text",
                  "engine/relative.py:2 imports tui", "engine/sub/__init__.py:1 imports screens",
                  "engine/prefixed.py:1 imports tui.app", "engine/hidden.py:3 imports screens.training"):
        assert where in bad, (where, bad)
    assert not any("clean.py" in b for b in bad)


def test_importing_every_engine_module_loads_no_ui_library():
    # the same rule at run time: one interpreter imports every engine module
    mods = sorted("loratui." + m for m in project_modules() if m.split(".")[0] == "engine")
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "    bad = [x for x in ('textual', 'rich', 'loratui.tui', 'loratui.screens') if x in sys.modules]\n"
        "    if bad:\n"
        "        print(m, 'imports', bad); sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_the_run_time_check_catches_a_ui_import(tmp_path):
    (tmp_path / "leaky.py").write_text("import textual\n")
    code = "import sys, leaky; sys.exit(1 if 'textual' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 1


# --------------------------------------------------------------------------- cycles


def test_no_import_cycles_between_project_modules():
    graph = import_graph()
    assert len(graph) > 50 and "screens.dashboard" in graph["tui.app"] | graph["tui.runs"] | graph["tui.watching"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    root = plant(tmp_path, {
        # a loop through an import inside a function and a relative import
        "engine/a.py": "from . import b\n",
        "engine/b.py": "def f():\n    from loratui.engine.c import x\n",
        "engine/c.py": "import engine.a\n",
        # no loop: the way back is only for type checkers
        "tui/app.py": "from loratui.screens import form\n",
        "screens/form.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from loratui.tui.app import App\n",
        # a package importing its own submodule is no loop
        "engine/pkg/__init__.py": "from .part import y\n",
        "engine/pkg/part.py": "import json\n",
    })
    graph = import_graph(root)
    assert graph["engine.b"] == {"engine.c"} and "tui.app" not in graph["screens.form"]
    assert cycles(graph) == [["engine.a", "engine.b", "engine.c"]]
    # and a second, separate one
    (root / "screens" / "form.py").write_text("from ..tui import app\n")
    assert cycles(import_graph(root)) == [["engine.a", "engine.b", "engine.c"], ["screens.form", "tui.app"]]
