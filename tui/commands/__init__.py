"""Sub-commands of `loratui` that open the app: ``demo`` and ``watch``.

Same shape as ``loratui.engine.commands`` (``NAME``, ``HELP``,
``add_arguments(parser)``, ``run(args) -> int``); ``tui.cli`` offers both sets.
They import textual only inside ``run``, and only when the app is asked for.
"""
