"""``disttune launch CONFIG [options] -- SCRIPT [ARGS]``: check the config, then ``accelerate launch``."""

from __future__ import annotations

import argparse

from disttune.config.schema import MIXED_PRECISIONS
from disttune.errors import UserError

USAGE = (
    "disttune launch CONFIG [accelerate options] [--debug] [--timeout SECONDS] [--dry_run] -- SCRIPT [ARGS]"
)

# accelerate launch options passed through unchanged (same names, same meaning).
PASSTHROUGH: dict[str, dict] = {
    "--num_processes": {"type": int, "metavar": "N", "help": "Total processes over all machines."},
    "--num_machines": {"type": int, "metavar": "N"},
    "--machine_rank": {"type": int, "metavar": "N", "help": "This machine's rank (0 = main node)."},
    "--main_process_ip": {"metavar": "ADDR", "help": "Main node's address (every node)."},
    "--main_process_port": {"type": int, "metavar": "PORT"},
    "--mixed_precision": {"choices": list(MIXED_PRECISIONS)},
    "--gpu_ids": {"metavar": "IDS", "help": "Comma-separated GPU ids on this machine, or 'all'."},
    "--num_cpu_threads_per_process": {"type": int, "metavar": "N"},
    "--rdzv_backend": {"choices": ["static", "c10d"]},
    "--max_restarts": {"type": int, "metavar": "N"},
    "--monitor_interval": {"type": float, "metavar": "SECONDS"},
    "--deepspeed_hostfile": {"metavar": "FILE"},
    "--deepspeed_multinode_launcher": {
        "choices": ["pdsh", "standard", "openmpi", "mvapich", "mpich", "nossh"]
    },
    "--same_network": {"action": "store_true"},
    "--cpu": {"action": "store_true", "help": "Force the CPU even when GPUs are visible."},
    "--quiet": {"action": "store_true"},
}


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds (e.g. 1800)")
    return value


def _add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accelerate launch options (passed through)")
    for flag, spec in PASSTHROUGH.items():
        group.add_argument(flag, **spec)
    ours = parser.add_argument_group("disttune options")
    ours.add_argument(
        "--debug",
        action="store_true",
        help="Set NCCL_DEBUG=INFO, ACCELERATE_LOG_LEVEL=INFO, TORCH_DISTRIBUTED_DEBUG=DETAIL in the "
        "child and pass accelerate's --debug.",
    )
    ours.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="Collective timeout: appended to the script as --ddp_timeout SECONDS (NCCL_TIMEOUT does "
        "nothing).",
    )
    ours.add_argument(
        "--dry_run", action="store_true", help="Print the command and env changes; run nothing."
    )
    ours.add_argument("--json", action="store_true", help="With --dry_run: print the same data as JSON.")


class _InnerParser(argparse.ArgumentParser):
    """Parses the options between CONFIG and `--`; misuse is a UserError with exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UserError(f"{message}\nusage: {USAGE}", exit_code=2)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``launch`` command."""
    parser = subparsers.add_parser(
        "launch",
        help="Check an accelerate config, then run `accelerate launch` with it.",
        usage=USAGE,
        description="Runs `disttune check` on CONFIG (refuses to start on errors), then hands over to "
        "`accelerate launch --config_file CONFIG [options] SCRIPT [ARGS]` and returns its exit code.",
    )
    parser.add_argument("config", metavar="CONFIG", help="The accelerate config YAML.")
    _add_options(parser)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def split_rest(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Options after CONFIG go into ``args``; returns (SCRIPT, ARGS) from what follows ``--``."""
    rest = list(args.rest)
    if "--" in rest:
        cut = rest.index("--")
        head, tail = rest[:cut], rest[cut + 1 :]
    elif rest and not rest[0].startswith("-"):
        head, tail = [], rest
    else:
        head, tail = rest, []
        if head:
            raise UserError(f"put `--` before the script: {USAGE}", exit_code=2)
    if head:
        inner = _InnerParser(prog="disttune launch", add_help=False, argument_default=argparse.SUPPRESS)
        _add_options(inner)
        inner.parse_args(head, namespace=args)
    if not tail:
        raise UserError(f"no training script given. Usage: {USAGE}", exit_code=2)
    return tail[0], tail[1:]


def accelerate_args(args: argparse.Namespace) -> list[str]:
    """The pass-through options the user gave, as accelerate launch arguments."""
    argv: list[str] = []
    for flag, spec in PASSTHROUGH.items():
        value = getattr(args, flag[2:], None)
        if spec.get("action") == "store_true":
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    """Check, then launch (or print the plan with --dry_run)."""
    import json
    import sys
    from pathlib import Path

    from disttune.launch import (
        build_launch_command,
        check_before_launch,
        run_launcher,
        shell_line,
        with_timeout,
    )

    script, script_args = split_rest(args)
    if args.json and not args.dry_run:
        raise UserError(
            "--json only applies to --dry_run (a real launch streams the script's output).", exit_code=2
        )
    if not Path(args.config).is_file():
        raise UserError(
            f"config file {args.config!r} does not exist. Pass an accelerate config YAML, e.g. "
            "src/disttune/accelerate_configs/multi_gpu_ddp.yaml."
        )
    if not Path(script).is_file():
        raise UserError(f"training script {script!r} does not exist. Give its path after `--`.")
    argv, env_updates = build_launch_command(
        args.config, script, script_args, accelerate_args(args), debug=args.debug, timeout=args.timeout
    )
    warnings = check_before_launch(args.config, args.num_processes, with_timeout(script_args, args.timeout))
    for f in warnings:
        print(f"disttune launch: warning: {f.file}: {f.key}: {f.message} (fix: {f.fix})", file=sys.stderr)
    if args.dry_run:
        if args.json:
            print(
                json.dumps(
                    {"argv": argv, "env": env_updates, "warnings": [f.to_dict() for f in warnings]}, indent=2
                )
            )
        else:
            print("disttune launch --dry_run: nothing started. Would run:")
            for key, value in env_updates.items():
                print(f"  env {key}={value}")
            print(f"  {shell_line(argv, env_updates)}")
        return 0
    print(f"disttune launch: {shell_line(argv, env_updates)}", file=sys.stderr, flush=True)
    code = run_launcher(argv, env_updates, condense=not args.debug)  # the exit report: one line
    if code != 0:
        last = failure_record(script, script_args)
        if last:
            print(f"disttune launch: {last}", file=sys.stderr, flush=True)
    return code


def failure_record(script: str, script_args: list[str]) -> str | None:
    """What the training script recorded about the attempt that failed last (``train/failure.py``): the
    rank, the step and the cause, and whether every restart failed there. None when it left no record."""
    from disttune.train.failure import give_up_summary

    output_dir = output_dir_of(script, script_args)
    return give_up_summary(output_dir) if output_dir else None


def output_dir_of(script: str, script_args: list[str]) -> str | None:
    """The run folder of the launched script: for disttune's training script, read by its own parser
    (``train.args``: its default and a ``--config`` recipe's value count); for another script, its
    ``--output_dir`` argument, if any."""
    from pathlib import Path

    from disttune.launch import script_arg
    from disttune.train.args import PROG, parse_args

    if Path(script).name != PROG:
        return script_arg(script_args, "--output_dir")
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()  # the script already said what the libraries had to say
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_args(list(script_args))[1].output_dir
    except (UserError, SystemExit):
        return script_arg(script_args, "--output_dir")
