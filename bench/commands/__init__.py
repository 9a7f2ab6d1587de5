"""Subcommands of ``bench``; each module has ``register(subparsers)`` and ``run(args) -> int``."""
