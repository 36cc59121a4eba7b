"""The ``disttune`` command line: one module per command, each with ``register`` and ``run``.

``register(subparsers)`` adds the command's parser; ``run(args) -> int`` does the work and returns the
exit code. Heavy imports (torch, deepspeed, transformers) live inside ``run`` so that the everyday
commands answer instantly. Exit codes: 0 ok, 1 a problem with the user's input, 2 command-line misuse.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from disttune import __version__
from disttune.errors import UserError

# Command name -> module under disttune.cli. The order is the order in `disttune --help`.
COMMANDS = {
    "check": "check",
    "plan": "plan",
    "estimate": "estimate",
    "config": "config",
    "env": "env",
    "doctor": "doctor",
    "launch": "launch",
    "train": "train",
    "bench": "bench",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command that is installed."""
    parser = argparse.ArgumentParser(
        prog="disttune",
        description="Know before you launch: check, plan, estimate and run distributed fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"disttune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"disttune.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"disttune.cli.{module_name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``disttune`` console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "pass_through", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: --help exits 0, misuse exits 2
        return int(exc.code or 0)
    if getattr(args, "pass_through", False):
        args.script_args = list(extra) + list(getattr(args, "script_args", []))
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not as an error at exit
        return code
    except UserError as exc:
        print(f"disttune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"disttune {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `disttune estimate ... | head`: the reader left; Python's own convention
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
