"""``disttune bench``: run the same job under each strategy and measure it.

disttune bench --output_dir runs/bench
disttune bench --strategies ddp,zero3 --num_processes 2 --max_steps 10 --output_dir runs/bench
"""

from __future__ import annotations

import argparse

from disttune.precision import ESTIMATED_PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``disttune`` parser."""
    from disttune.bench import STRATEGIES, VARIANTS

    p = subparsers.add_parser(
        "bench",
        help="run the training script under each strategy; tokens/s, memory, loss vs the estimate",
        description="Launches the training script through accelerate launch under each strategy (same data, "
        "seed and global batch) and writes bench.json, bench.md and bench.png in --output_dir.",
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated subset of {', '.join(STRATEGIES)}",
    )
    p.add_argument("--num_processes", type=int, default=2, help="processes per run (default 2)")
    p.add_argument("--model", default="tiny", help="'tiny' (built-in) or a local model folder (default tiny)")
    p.add_argument("--max_steps", type=int, default=5, help="optimizer steps per run (default 5)")
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument(
        "--mixed_precision",
        choices=ESTIMATED_PRECISIONS,
        default=None,
        help="default: bf16 with a GPU, no on the CPU",
    )
    p.add_argument(
        "--variant",
        choices=tuple(VARIANTS),
        default="default",
        help="a fast default to measure: fused_adamw, packing, liger (needs liger-kernel)",
    )
    p.add_argument(
        "--vs_trl",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead: ours vs a plain TRL SFTTrainer on the same settings, PAIRS alternating pairs per strategy "
        "(the first one a warm-up); writes vs_trl.json. On a CPU use --num_processes 1: plain TRL does not form a "
        "process group there",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--script", help="the training script (default: 07_distributed_training.py)")
    p.add_argument(
        "--output_dir", required=True, help="where bench.json, bench.md, bench.png and the runs go"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 when a run failed."""
    from pathlib import Path

    from disttune.bench import parse_strategies, run_bench
    from disttune.errors import UserError

    strategies = parse_strategies(args.strategies)
    problems = [
        f"--{name} must be a positive whole number, got {getattr(args, name)}"
        for name in ("num_processes", "max_steps", "per_device_train_batch_size", "max_length")
        if getattr(args, name) < 1
    ]
    if problems:
        raise UserError("; ".join(problems) + ".")
    mixed_precision = args.mixed_precision
    if mixed_precision is None:
        import torch

        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    out = Path(args.output_dir)
    if args.vs_trl:
        return _vs_trl(args, strategies, out, mixed_precision)
    data = run_bench(
        strategies,
        out,
        args.num_processes,
        args.model,
        args.max_steps,
        args.per_device_train_batch_size,
        args.max_length,
        mixed_precision,
        args.variant,
        args.seed,
        args.script,
    )
    print(f"bench: wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 1 if any("error" in r for r in data["runs"]) else 0


def _vs_trl(args: argparse.Namespace, strategies: list[str], out, mixed_precision: str) -> int:
    """``--vs_trl PAIRS``: ours vs plain TRL per strategy (``disttune.versus``)."""
    from disttune.bench import bench_script_args, run_vs_trl
    from disttune.errors import UserError
    from disttune.train.tiny import TINY_NAME, tiny_checkpoint

    if args.vs_trl < 1 or args.max_steps < 5:
        raise UserError(
            "--vs_trl needs at least 1 pair and --max_steps 5 or more (a steady window to measure)."
        )
    model_dir = str(tiny_checkpoint(args.seed)) if args.model == TINY_NAME else args.model
    script_args = bench_script_args(
        model_dir,
        args.max_steps,
        args.per_device_train_batch_size,
        args.max_length,
        args.seed,
        args.variant,
        1,
    )
    out.mkdir(parents=True, exist_ok=True)
    run_vs_trl(strategies, out, args.vs_trl, args.num_processes, mixed_precision, script_args)
    print(f"bench: wrote {out / 'vs_trl.json'}")
    return 0
