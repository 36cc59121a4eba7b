"""Ours vs the peer: our training script and plain TRL (``plain_trl_sft.py``), alternating, same settings.

    python benchmarks/overhead_vs_trl.py --pairs 5 --max_steps 40                     # CPU, one process
    python benchmarks/overhead_vs_trl.py --config single_gpu --pairs 3 --max_steps 30 \\
        --output ddp.json -- --model_name_or_path /tmp/llama-1b --packing true --max_length 2048 \\
        --per_device_train_batch_size 4 --attn_implementation sdpa --learning_rate 1e-4   # one GPU

Each pair runs both commands, the order alternating between pairs (A B, then B A, ...), never at the same
time. Without ``--config`` both run as one plain process; with it, both through ``accelerate launch
--config_file accelerate_configs/<config>.yaml --num_processes 1`` in the config's own precision. The
arguments after ``--`` go to both scripts unchanged; ours runs as a user runs it (its held-out evaluation
included, inside transformers' ``train_runtime``, as its defaults say).

Two figures per run, computed the same way for both sides:
- ``runtime``: transformers' own ``num_input_tokens_seen / train_runtime`` (the whole ``train()`` call);
- ``steady``: tokens over wall time between the log at ``--warmup_steps_skipped`` and the last log (ours:
  ``metrics.jsonl``; the peer: its ``clock.jsonl``), which leaves out one-off work at the start (the first
  steps' kernel selection, our held-out answers before training).
The first pair is a warm-up and is left out of the summary when there are two or more (page cache, kernel
caches and clocks settle in it). Writes JSON with every number and prints one line per pair.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _final_log(run_dir: Path, ours: bool) -> dict:
    """transformers' final metrics of a run: ``train_runtime`` and ``num_input_tokens_seen``."""
    if not ours:
        return json.loads((run_dir / "train_metrics.json").read_text())
    logs = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines() if line]
    return next(log for log in reversed(logs) if "train_runtime" in log)


def _clock(run_dir: Path, ours: bool) -> list[tuple[int, float, int]]:
    """``(step, wall time, tokens seen so far)`` at each training log."""
    if not ours:
        rows = [json.loads(line) for line in (run_dir / "clock.jsonl").read_text().splitlines() if line]
        return [(r["step"], r["time"], r["tokens"]) for r in rows]
    from disttune.train.metrics import read_metrics

    rows, seen = [], 0
    for record in read_metrics(run_dir):
        seen += record["tokens"]
        rows.append((record["step"], record["time"], seen))
    return rows


def measure(cmd: list[str], run_dir: Path, ours: bool, skip: int) -> dict:
    """Run ``cmd``; its runtime and steady-state tokens/s."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (run_dir.parent / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    shutil.rmtree(run_dir / "final", ignore_errors=True)  # ours saves the model: 4.4 GB for the 1.1B one
    final = _final_log(run_dir, ours)
    clock = [row for row in _clock(run_dir, ours) if row[0] >= skip]
    steady = None
    if len(clock) >= 2 and clock[-1][1] > clock[0][1]:
        steady = (clock[-1][2] - clock[0][2]) / (clock[-1][1] - clock[0][1])
    return {
        "runtime_tokens_per_second": round(
            int(final["num_input_tokens_seen"]) / float(final["train_runtime"]), 1
        ),
        "train_runtime_s": float(final["train_runtime"]),
        "tokens": int(final["num_input_tokens_seen"]),
        "steady_tokens_per_second": round(steady, 1) if steady else None,
        "steady_steps": f"{clock[0][0]}-{clock[-1][0]}" if len(clock) >= 2 else None,
        "wall_s": round(wall, 1),
    }


def command(script: Path, run_dir: Path, config: str | None, script_args: list[str]) -> list[str]:
    args = ["--output_dir", str(run_dir), "--overwrite_output_dir", "true", *script_args]
    if config is None:
        return [sys.executable, str(script), *args]
    from disttune.bench import launch_command

    config_file = Path(config) if config.endswith(".yaml") else ROOT / "accelerate_configs" / f"{config}.yaml"
    return launch_command(config_file, script, run_dir, 1, None, args[2:])


def summarise(pairs: list[dict], key: str) -> dict | None:
    ratios = [p[f"ratio_{key}"] for p in pairs if p.get(f"ratio_{key}") is not None]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "pairs": len(ratios)}


def main() -> None:
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
    args, script_args = parser.parse_known_args()
    script_args = [a for a in script_args if a != "--"]
    script_args += ["--max_steps", str(args.max_steps), "--logging_steps", str(args.logging_steps)]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    sides = {
        "ours": ROOT / "07_distributed_training.py",
        "plain": ROOT / "benchmarks" / "plain_trl_sft.py",
    }
    pairs = []
    for i in range(args.pairs):
        order = ["ours", "plain"] if i % 2 == 0 else ["plain", "ours"]
        pair = {"order": " ".join(order)}
        for side in order:
            run_dir = work / f"{side}-{i + 1}"
            cmd = command(sides[side], run_dir, args.config, script_args)
            pair[side] = measure(cmd, run_dir, side == "ours", args.warmup_steps_skipped)
        for key in ("runtime", "steady"):
            ours, plain = pair["ours"][f"{key}_tokens_per_second"], pair["plain"][f"{key}_tokens_per_second"]
            pair[f"ratio_{key}"] = round(ours / plain, 3) if ours and plain else None
        pairs.append(pair)
        print(
            f"pair {i + 1}/{args.pairs} ({pair['order']}): runtime ours {pair['ours']['runtime_tokens_per_second']:.0f} "
            f"vs plain {pair['plain']['runtime_tokens_per_second']:.0f} tokens/s, ratio {pair['ratio_runtime']}; "
            f"steady (steps {pair['ours']['steady_steps']}) ours {pair['ours']['steady_tokens_per_second']} vs "
            f"plain {pair['plain']['steady_tokens_per_second']}, ratio {pair['ratio_steady']}",
            flush=True,
        )
    counted = pairs[1:] if len(pairs) >= 2 else pairs
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "config": args.config,
        "max_steps": args.max_steps,
        "script_args": script_args,
        "pairs": pairs,
        "warm_up_pair_left_out": len(pairs) >= 2,
        "runtime": summarise(counted, "runtime"),
        "steady": summarise(counted, "steady"),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for key in ("runtime", "steady"):
        s = result[key]
        if s:
            print(
                f"ours / plain TRL ({key}) over {s['pairs']} pair(s) after the warm-up: median {s['median']:.3f}, "
                f"min {s['min']:.3f}, max {s['max']:.3f}"
            )


if __name__ == "__main__":
    main()
