"""The `loratui` console script.

`loratui`                 open the app on the last used profile
`loratui PROFILE.toml`    open the app on that profile
`loratui COMMAND ...`     a headless command (train, check, demo, ...) — no Textual import
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from loratui.engine.cli import command_modules, run_command

    if argv and (argv[0] in command_modules() or argv[0] in ("-h", "--help")):
        return run_command(argv)
    profile = argv[0] if argv else None
    from loratui.tui.app import run_app

    return run_app(profile) or 0


if __name__ == "__main__":
    sys.exit(main())
