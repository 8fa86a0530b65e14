"""The `loratui` console script.

`loratui`                 open the app on the last used profile
`loratui PROFILE.toml`    open the app on that profile
`loratui COMMAND ...`     a sub-command: the engine's (train, check, ...; no
                          Textual import) and the app's (demo, watch)
"""

from __future__ import annotations

import sys

COMMANDS = ("loratui.engine.commands", "loratui.tui.commands")


def looks_like_profile(arg: str) -> bool:
    """A ``.toml`` file is never a command name: opening the app on it need not
    import every command module to find out (that costs start-up time)."""
    return arg.endswith(".toml")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not looks_like_profile(argv[0]):
        from loratui.engine.cli import command_modules, run_command

        if argv[0] in command_modules(COMMANDS) or argv[0] in ("-h", "--help"):
            return run_command(argv, COMMANDS)
    profile = argv[0] if argv else None
    from loratui.tui.startup import pause_gc

    pause_gc()  # until the first frame (the app resumes it)
    from loratui.tui.app import run_app

    return run_app(profile) or 0


if __name__ == "__main__":
    sys.exit(main())
