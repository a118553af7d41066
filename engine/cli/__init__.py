"""The engine's commands: ``bots-engine`` (:mod:`~engine.cli.engine`) and the ``botsq`` subcommands
that need only the engine - ``files``, ``runs``, ``init``. :mod:`~engine.cli.common` holds what
every command of botsq shares (argument errors as one line, exit codes). The engine itself never
imports from here.
"""
