"""The console script offers the engine's commands and the app's; the engine's
own command line knows only its own (engine/ never imports tui)."""

from __future__ import annotations

import pytest

from loratui.engine.cli import build_parser, command_modules, run_command
from loratui.tui.cli import COMMANDS, main


def test_the_engine_discovers_only_engine_commands():
    names = set(command_modules())
    assert {"train", "check", "caption", "export", "dataset"} <= names
    assert "demo" not in names and "watch" not in names
    assert all(m.__name__.startswith("loratui.engine.commands.") for m in command_modules().values())


def test_the_console_script_combines_both():
    mods = command_modules(COMMANDS)
    assert {"train", "check", "demo", "watch"} <= set(mods)
    assert mods["demo"].__name__ == "loratui.tui.commands.demo"
    assert mods["watch"].__name__ == "loratui.tui.commands.watch"
    assert mods["train"].__name__ == "loratui.engine.commands.train"
    args = build_parser(packages=COMMANDS).parse_args(["demo", "--headless"])
    assert args.headless and args._run is mods["demo"].run


def test_an_app_command_is_unknown_to_the_engine_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        run_command(["watch", "/nowhere"])
    assert exc.value.code == 2 and "invalid choice: 'watch'" in capsys.readouterr().err


def test_the_console_script_runs_an_app_command_headless(tmp_path, capsys):
    # `watch` on a folder with no run fails before any UI is opened
    assert main(["watch", str(tmp_path)]) == 2
    assert "holds no *.metrics.jsonl file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "demo" in out and "watch" in out and "train" in out


def test_finding_the_commands_imports_no_ui_library():
    # `loratui train ...` goes through tui.cli: listing the app's commands must not
    # load textual (they import it inside run(), when the app is asked for)
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from loratui.engine.cli import build_parser\n"
        "from loratui.tui.cli import COMMANDS\n"
        "build_parser(packages=COMMANDS)\n"
        "bad = [m for m in ('textual', 'rich', 'loratui.tui.app', 'loratui.screens') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_demo_headless_hands_train_every_argument_it_reads(monkeypatch, tmp_path):
    """`loratui demo --headless` calls the train command with a full set of its arguments."""
    import loratui.engine.demo as demo_engine
    from loratui.engine.commands import train
    from loratui.tui.commands import demo

    seen = {}
    monkeypatch.setattr(demo_engine, "prepare_demo", lambda on_progress=None: tmp_path / "demo.toml")
    monkeypatch.setattr(train, "run", lambda args: seen.setdefault("args", args) and 0)
    demo.run(build_parser(packages=COMMANDS).parse_args(["demo", "--headless"]))
    args = seen["args"]
    assert args.profile == str(tmp_path / "demo.toml") and args.overwrite and args.gpus is None and args.resume is None
    assert args.overrides == []
