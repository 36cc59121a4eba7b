"""Ours vs the peer (plain TRL), alternating, same settings: ``disttune.versus`` from the command line.

    python benchmarks/overhead_vs_trl.py --pairs 5 --max_steps 40                     # CPU, one process
    python benchmarks/overhead_vs_trl.py --config single_gpu --pairs 3 --max_steps 30 \\
        --output ddp.json -- --model_name_or_path /tmp/llama-1b --packing true --max_length 2048 \\
        --per_device_train_batch_size 4 --attn_implementation sdpa --learning_rate 1e-4   # one GPU

Without ``--config`` both run as one plain process; with it, both through ``accelerate launch --config_file
accelerate_configs/<config>.yaml --num_processes 1`` in the config's own precision. The arguments after
``--`` go to both scripts unchanged. ``disttune bench --vs_trl`` does the same per strategy on N processes.
Writes JSON with every number and prints one line per pair (what each figure means: ``disttune/versus.py``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from disttune.bench import launch_command
    from disttune.versus import PEER, compare, plain_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--logging_steps", type=int, default=5)
    parser.add_argument(
        "--warmup_steps_skipped", type=int, default=10, help="steady state starts at this log"
    )
    parser.add_argument("--config", help="a shipped accelerate config (name or path); none: plain processes")
    parser.add_argument("--output", default="overhead_vs_trl.json")
    parser.add_argument("--work", help="folder for the runs (default: a new temporary folder)")
    parser.add_argument(
        "--ours_args",
        default="",
        help="arguments for our script only, after the shared ones (a fast path against the plain peer, "
        "e.g. '--attn_implementation flex_attention'); the JSON records them",
    )
    args, script_args = parser.parse_known_args()
    script_args = [a for a in script_args if a != "--"]
    script_args += ["--max_steps", str(args.max_steps), "--logging_steps", str(args.logging_steps)]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    scripts = {"ours": ROOT / "07_distributed_training.py", "plain": PEER}

    def command(side: str):
        side_args = script_args + (shlex.split(args.ours_args) if side == "ours" else [])
        if args.config is None:
            return lambda run_dir: plain_command(scripts[side], run_dir, side_args)
        config = (
            Path(args.config)
            if args.config.endswith(".yaml")
            else ROOT / "accelerate_configs" / f"{args.config}.yaml"
        )
        extra = ["--overwrite_output_dir", "true", *side_args]
        return lambda run_dir: launch_command(config, scripts[side], run_dir, 1, None, extra)

    data = compare(
        {side: command(side) for side in scripts}, work, args.pairs, args.warmup_steps_skipped, cwd=ROOT
    )
    data.update(
        config=args.config, max_steps=args.max_steps, script_args=script_args, ours_args=args.ours_args
    )
    Path(args.output).write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
