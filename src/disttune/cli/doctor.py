"""``disttune doctor``: pass/warn/fail pre-flight checks for a distributed run, each with its fix."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``doctor`` command."""
    parser = subparsers.add_parser(
        "doctor",
        help="Check this machine (and optionally a config) before a distributed run.",
        description="Checks /dev/shm, GPUs vs num_processes, bf16/fp16 support, the rendezvous port, the "
        "collective timeout, DeepSpeed's op prerequisites and the default accelerate config, then gives "
        "the FAQ's guidance for slow scaling, hangs and several machines. Exit code 1 if any check fails. "
        "The network is only touched with --probe_host.",
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="An accelerate config to check as well.")
    parser.add_argument(
        "--probe_host",
        metavar="HOST",
        help="Main node to test a TCP connection to (run this on the other nodes). Nothing is probed without it.",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="P",
        help="Rendezvous port (default: main_process_port of CONFIG, else 29500).",
    )
    parser.add_argument("--json", action="store_true", help="Print the same data as JSON.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run every check, print them, return 1 if any failed."""
    import json
    from pathlib import Path

    from disttune.doctor import render_checks, run_checks
    from disttune.errors import UserError

    if args.config and not Path(args.config).is_file():
        raise UserError(
            f"config file {args.config!r} does not exist. Pass the path of an accelerate config "
            "YAML, e.g. src/disttune/accelerate_configs/multi_gpu_ddp.yaml."
        )
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(
            f"--port {args.port} is not a TCP port; use a number between 1 and 65535 (e.g. 29500)."
        )
    checks = run_checks(config_path=args.config, probe_host=args.probe_host, port=args.port)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        print(render_checks(checks))
    return 1 if failed else 0
