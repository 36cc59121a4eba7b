"""``disttune check``: validate accelerate configs and the DeepSpeed JSON they reference, all problems at once.

Exit codes: 0 no errors (warnings are printed), 1 any error (or any warning with ``--strict``), 2 misuse.
"""

from __future__ import annotations

import argparse
import json

from disttune.errors import UserError

HELP = "validate accelerate configs (and their DeepSpeed JSON) before you launch"
EPILOG = (
    "Arguments after `--` are your training script's; they are compared with the config "
    "(--gradient_accumulation_steps, --max_grad_norm, --bf16/--fp16/--mixed_precision, "
    "--per_device_train_batch_size).\n"
    "examples:\n"
    "  disttune check accelerate_configs/deepspeed_zero3.yaml\n"
    "  disttune check my.yaml ds_config.json --num_processes 16 --strict\n"
    "  disttune check my.yaml -- --gradient_accumulation_steps 8 --bf16"
)


def register(subparsers) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_processes", type=int, default=None, metavar="N",
                        help="total processes (overrides the YAML's num_processes for the batch-size checks)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG [CONFIG ...] [-- SCRIPT ARGS]",
                        help="accelerate YAML files and/or DeepSpeed JSON files")  # fmt: skip
    parser.set_defaults(run=run)


def _split(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Options given after the first config are parsed here (argparse stops at the first positional)."""
    configs: list[str] = []
    items = list(args.items)
    while items:
        item = items.pop(0)
        if item == "--":
            return configs, items
        name, eq, value = item.partition("=")
        if name == "--strict" and not eq:
            args.strict = True
        elif name == "--json" and not eq:
            args.json = True
        elif name == "--num_processes":
            value = value if eq else (items.pop(0) if items else "")
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"--num_processes needs a positive whole number, got {value!r}", exit_code=2)
            args.num_processes = int(value)
        elif item.startswith("-"):
            raise UserError(f"unknown option {item!r}; script arguments go after `--`", exit_code=2)
        else:
            configs.append(item)
    return configs, []


def render_text(report) -> str:
    """One block per finding, then notes and the summary line."""
    lines = []
    for f in report.findings:
        where = f"{f.file}:{f.key}" if f.key else f.file
        value = "" if f.value is None else f" (value: {f.value!r})"
        lines.append(f"{f.severity.upper()} {where}: {f.message}{value}\n  fix: {f.fix}")
    lines += [f"note: {n}" for n in report.notes]
    e, w, k = report.errors, report.warnings, len(report.files)
    lines.append(f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)} in {k} file{'s' * (k != 1)}")
    return "\n".join(lines)


def render_json(report) -> str:
    """``{"files", "findings", "errors", "warnings", "notes"}`` as JSON."""
    return json.dumps(
        {
            "files": report.files,
            "findings": [f.to_dict() for f in report.findings],
            "errors": report.errors,
            "warnings": report.warnings,
            "notes": report.notes,
        },
        indent=2,
        default=repr,
    )


def run(args: argparse.Namespace) -> int:
    """Check every config, print the findings, return the exit code."""
    from disttune.config import check_files

    configs, script_args = _split(args)
    if not configs:
        raise UserError("give at least one config file, e.g. disttune check accelerate_configs/deepspeed_zero3.yaml",
                        exit_code=2)  # fmt: skip
    if args.num_processes is not None and args.num_processes < 1:
        raise UserError("--num_processes must be at least 1", exit_code=2)
    report = check_files(configs, args.num_processes, script_args)
    print(render_json(report) if args.json else render_text(report))
    if report.errors or (args.strict and report.warnings):
        return 1
    return 0
