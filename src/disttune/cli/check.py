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
    "(--gradient_accumulation_steps, --max_grad_norm, --per_device_train_batch_size under DeepSpeed; "
    "--bf16/--fp16 against the config's precision; --optim, --lr_scheduler_type, --learning_rate, "
    "--weight_decay, --adam_beta1/2, --adam_epsilon, --warmup_steps, --max_steps against a DeepSpeed "
    "optimizer or scheduler block, which replaces them).\n"
    "A file's kind (accelerate config, DeepSpeed JSON, DeepSpeed inference JSON) is read from its keys, not "
    "its extension. A relative deepspeed_config_file is looked up from the current directory, as "
    "`accelerate launch` opens it: run check from where you launch.\n"
    "examples:\n"
    "  disttune check accelerate_configs/deepspeed_zero3.yaml\n"
    "  disttune check my.yaml ds_config.json --num_processes 16 --strict\n"
    "  disttune check my.yaml -- --gradient_accumulation_steps 8 --bf16"
)


def register(subparsers) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check",
        help=HELP,
        description=HELP + ".",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--num_processes",
        type=int,
        default=None,
        metavar="N",
        help="total processes (overrides the YAML's num_processes for the batch-size checks)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "items",
        nargs=argparse.REMAINDER,
        metavar="CONFIG [CONFIG ...] [-- SCRIPT ARGS]",
        help="accelerate YAML files and/or DeepSpeed JSON files",
    )
    parser.set_defaults(run=run)


class _ItemsParser(argparse.ArgumentParser):
    """Parses what follows ``check`` (configs and options, in any order); raises instead of exiting."""

    def error(self, message):
        raise UserError(f"disttune check: {message}", exit_code=2)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--num_processes needs a positive whole number, got {text!r}")
    return int(text)


def _split(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(configs, script args): options may follow the configs; everything after the first ``--`` is the script's."""
    items = list(args.items)
    cut = items.index("--") if "--" in items else len(items)
    parser = _ItemsParser(prog="disttune check", add_help=False, allow_abbrev=False)
    parser.add_argument("configs", nargs="*")
    parser.add_argument("--num_processes", type=_positive, default=None)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--json", action="store_true")
    ours, unknown = parser.parse_known_intermixed_args(items[:cut])
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; script arguments go after `--`", exit_code=2)
    args.strict = args.strict or ours.strict
    args.json = args.json or ours.json
    if ours.num_processes is not None:
        args.num_processes = ours.num_processes
    return ours.configs, items[cut + 1 :]


def render_text(report) -> str:
    """One block per finding, then notes and the summary line."""
    lines = []
    for f in report.findings:
        where = f"{f.file}:{f.key}" if f.key else f.file
        value = "" if f.value is None else f" (value: {f.value!r})"
        said = (
            f.message if not f.key and f.message.startswith(f.file) else f"{where}: {f.message}"
        )  # file:line
        lines.append(f"{f.severity.upper()} {said}{value}\n  fix: {f.fix}")
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
        raise UserError(
            "give at least one config file, e.g. disttune check accelerate_configs/deepspeed_zero3.yaml",
            exit_code=2,
        )
    if args.num_processes is not None and args.num_processes < 1:
        raise UserError("--num_processes must be at least 1", exit_code=2)
    flags = None
    if script_args:
        from disttune.train.args import compared_flags  # the script's own parser (imports TRL)

        flags = compared_flags(script_args)
    report = check_files(configs, args.num_processes, flags)
    print(render_json(report) if args.json else render_text(report))
    if report.errors or (args.strict and report.warnings):
        return 1
    return 0
