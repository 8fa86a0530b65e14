"""Headless sub-commands of `loratui`.

Each module here defines ``NAME`` (the sub-command), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).  The CLI
discovers them; adding a command means adding a module.  None imports textual.
"""
