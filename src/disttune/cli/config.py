"""``disttune config new|list|path``: write an accelerate config, or find the shipped ones.

``--num_processes`` (the total over all machines) defaults to the number of GPUs ``nvidia-smi`` shows on
this machine times ``--num_machines``; without ``nvidia-smi`` it must be given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from disttune.errors import UserError

HELP = "write a new accelerate config, or list / locate the shipped ones"


def register(subparsers) -> None:
    """Add the ``config`` command with its ``new``, ``list`` and ``path`` subcommands."""
    from disttune.config.new import PRECISIONS, STRATEGIES

    parser = subparsers.add_parser("config", help=HELP, description=HELP + ".")
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    parser.set_defaults(run=lambda args: _usage(parser))

    new = sub.add_parser(
        "new",
        help="write an accelerate YAML that passes `disttune check`",
        description="Write an accelerate YAML that passes `disttune check`.",
    )
    new.add_argument("--strategy", required=True, choices=STRATEGIES)
    new.add_argument(
        "--num_processes",
        type=int,
        default=None,
        metavar="N",
        help="total processes over all machines (default: GPUs seen by nvidia-smi x --num_machines)",
    )
    new.add_argument("--num_machines", type=int, default=1, metavar="N")
    new.add_argument("--machine_rank", type=int, default=0, metavar="I")
    new.add_argument("--main_process_ip", default=None, metavar="ADDR")
    new.add_argument("--main_process_port", type=int, default=29500, metavar="PORT")
    new.add_argument(
        "--mixed_precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 when every local GPU has compute capability >= 8.0, else fp16",
    )
    new.add_argument(
        "--output", "-o", default=None, metavar="FILE", help="write here (default: print the YAML)"
    )
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    new.add_argument("--slurm", action="store_true", help="also write an sbatch script next to --output")
    new.set_defaults(run=run_new)

    lst = sub.add_parser("list", help="print the names and paths of the shipped configs")
    lst.set_defaults(run=run_list)
    path = sub.add_parser("path", help="print the path of one shipped config")
    path.add_argument("name", help="e.g. deepspeed_zero3")
    path.set_defaults(run=run_path)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_list(args: argparse.Namespace) -> int:
    """Print ``name  path`` for every shipped config."""
    from disttune.config import shipped_config_names, shipped_config_path

    for name in shipped_config_names():
        print(f"{name:<24} {shipped_config_path(name)}")
    return 0


def run_path(args: argparse.Namespace) -> int:
    """Print the path of the shipped config ``args.name``."""
    from disttune.config import shipped_config_path

    print(shipped_config_path(args.name))
    return 0


def run_new(args: argparse.Namespace) -> int:
    """Resolve the defaults, validate everything, write (or print) the config and tell how to launch it."""
    from disttune.config import check_files
    from disttune.config.new import (
        NewConfig,
        detect_gpus,
        launch_commands,
        pick_mixed_precision,
        render_yaml,
        validate,
        write_new,
        yaml_config_for,
    )

    notes = []
    gpus = detect_gpus() if args.num_processes is None or args.mixed_precision == "auto" else None
    num_processes = args.num_processes
    if num_processes is None:
        if not gpus:
            raise UserError(
                "--num_processes is required here: no GPU is visible (nvidia-smi found none), so the "
                "number of processes cannot be guessed. Pass the total over all machines, "
                "e.g. --num_processes 8"
            )
        num_processes = len(gpus) * args.num_machines
        notes.append(
            f"num_processes: {num_processes} ({len(gpus)} local GPUs x {args.num_machines} machine(s))"
        )
    precision, note = pick_mixed_precision(args.mixed_precision, gpus)
    notes += [note] if note else []
    cfg = NewConfig(
        args.strategy,
        num_processes,
        args.num_machines,
        args.machine_rank,
        args.main_process_ip,
        args.main_process_port,
        precision,
    )
    validate(cfg, slurm=args.slurm)
    if args.slurm and not args.output:
        raise UserError("--slurm writes the sbatch script next to the YAML: give --output FILE.yaml")
    if args.output is None:
        print(render_yaml(cfg), end="")
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        return 0

    written = write_new(cfg, Path(args.output), force=args.force, slurm=args.slurm)
    for path in written:
        print(f"wrote {path}")
    if yaml_config_for(cfg, args.slurm) is not cfg:
        notes.append("the YAML holds one node's share; the sbatch script scales it to the Slurm allocation")
    for n in notes:
        print(f"note: {n}")
    if args.slurm:
        print(f"submit: sbatch {written[1]}")
    else:
        print("launch:" if cfg.num_machines == 1 else "launch (one command per machine):")
        for cmd in launch_commands(cfg, str(written[0])):
            print(f"  {cmd}")
    report = check_files([written[0]])
    if report.findings:  # a bug in the writer: say so rather than hide it
        print(f"disttune check found {len(report.findings)} problem(s) in the new file; please report this")
        return 1
    return 0
