"""``disttune plan``: global batch, gradient accumulation and learning rate, before you launch.

    disttune plan --num_processes 1 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \\
        --to_num_processes 4 --learning_rate 2e-5
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from disttune import plan as planlib
from disttune.errors import UserError

FORMULA = "global_batch_size = per_device_train_batch_size x num_processes x gradient_accumulation_steps"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the ``disttune`` parser."""
    p = subparsers.add_parser(
        "plan",
        help="global batch, accumulation and LR for a GPU count (and when moving to another)",
        description="Give --num_processes and two of per-device batch, accumulation and global batch; "
        "the third is computed. --to_num_processes converts the plan keeping the global batch.",
    )
    p.add_argument(
        "--num_processes", type=int, default=1, help="processes (GPUs) in the source plan (default 1)"
    )
    p.add_argument("--per_device_train_batch_size", type=int, help="sequences per process per micro-step")
    p.add_argument("--gradient_accumulation_steps", type=int, help="micro-steps per optimizer step")
    p.add_argument("--global_batch_size", type=int, help="sequences per optimizer step over all processes")
    p.add_argument("--to_num_processes", type=int, help="convert the plan to this many processes")
    p.add_argument(
        "--to_per_device_train_batch_size",
        type=int,
        help="force this per-device batch in the converted plan (the LR is rescaled if G changes)",
    )
    p.add_argument("--learning_rate", type=float, help="the learning rate tuned for the source plan")
    p.add_argument(
        "--lr_scaling",
        choices=planlib.LR_RULES,
        default="sqrt",
        help="how the LR follows a changed global batch (default sqrt, the usual rule for Adam)",
    )
    p.add_argument("--max_length", type=int, help="sequence length, for tokens per step")
    p.add_argument("--num_examples", type=int, help="training examples, for optimizer steps per epoch")
    p.add_argument("--dataloader_drop_last", action="store_true", help="count steps as with drop_last=True")
    p.add_argument("--json", action="store_true", help="print the plans as JSON on stdout")
    p.set_defaults(run=run)


def _options_payload(err: UserError) -> list[dict]:
    return [asdict(o) for o in getattr(err, "options", [])]


def run(args: argparse.Namespace) -> int:
    """Compute the plan(s) and print them as a table or JSON."""
    if args.to_per_device_train_batch_size is not None and args.to_num_processes is None:
        raise UserError("--to_per_device_train_batch_size needs --to_num_processes.")
    try:
        source = planlib.solve(
            args.num_processes,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            args.global_batch_size,
        )
        if args.learning_rate is not None:
            if not args.learning_rate > 0:
                raise UserError(f"--learning_rate must be positive, got {args.learning_rate}.")
            source = planlib.BatchPlan(
                *[
                    getattr(source, f)
                    for f in (
                        "num_processes",
                        "per_device_train_batch_size",
                        "gradient_accumulation_steps",
                        "global_batch_size",
                    )
                ],
                learning_rate=args.learning_rate,
            )
        plans = [source]
        if args.to_num_processes is not None:
            plans.append(
                planlib.convert(
                    source, args.to_num_processes, args.to_per_device_train_batch_size, args.lr_scaling
                )
            )
        plans = [
            planlib.with_derived(p, args.max_length, args.num_examples, args.dataloader_drop_last)
            for p in plans
        ]
    except UserError as err:
        if args.json:
            print(json.dumps({"error": str(err), "options": _options_payload(err)}, indent=2))
            return err.exit_code
        raise
    if args.json:
        print(json.dumps({"plans": [asdict(p) for p in plans], "formula": FORMULA}, indent=2))
    else:
        print(render(plans, args.lr_scaling))
    return 0


def _fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.4g}"


def render(plans: list[planlib.BatchPlan], lr_scaling: str = "sqrt") -> str:
    """A small aligned table, one row per plan, under the formula line."""
    header = ["plan", "processes", "per_device", "accum", "global", "lr", "tokens/step", "steps/epoch"]
    rows = [header]
    for name, p in zip(("source", "converted"), plans, strict=False):
        rows.append(
            [
                name,
                str(p.num_processes),
                str(p.per_device_train_batch_size),
                str(p.gradient_accumulation_steps),
                str(p.global_batch_size),
                _fmt_lr(p.learning_rate),
                "-" if p.tokens_per_step is None else f"{p.tokens_per_step:,}",
                "-" if p.steps_per_epoch is None else f"{p.steps_per_epoch:,}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [FORMULA, ""]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    if len(plans) == 2:
        a, b = plans
        if a.global_batch_size == b.global_batch_size:
            lines.append("\nGlobal batch unchanged, so keep the learning rate.")
        elif a.learning_rate is not None:
            lines.append(
                f"\nGlobal batch {a.global_batch_size} -> {b.global_batch_size}: learning rate "
                f"rescaled by {lr_scaling} rule ({_fmt_lr(a.learning_rate)} -> {_fmt_lr(b.learning_rate)})."
            )
    return "\n".join(lines)
