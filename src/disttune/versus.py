"""Ours vs plain TRL: the training script and a plain ``SFTTrainer`` script (``train/peer.py``), alternating.

``disttune bench --vs_trl`` (and ``benchmarks/overhead_vs_trl.py`` on one process) run both on the same model,
data and arguments, through the same ``accelerate launch`` config, never at the same time, the order
alternating between pairs (ours then plain, plain then ours, ...). Ours runs as users run it (its held-out
answers before training are inside transformers' ``train_runtime``; on CUDA its defaults such as Liger's
kernels apply); the peer as a TRL user would write it for the same config. Two figures per run, computed the
same way for both sides:

- ``runtime``: transformers' own ``num_input_tokens_seen / train_runtime`` (the whole ``train()`` call);
- ``steady``: tokens over wall time between the log at ``warmup_steps_skipped`` and the last log (ours:
  ``metrics.jsonl``; the peer: its ``clock.jsonl``), which leaves out one-off work at the start.

The first pair is a warm-up and is left out of the summary when there are two or more.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from disttune.errors import UserError
from disttune.run_folder import RunFolder, read_jsonl

PEER = Path(__file__).resolve().parent / "train" / "peer.py"


def final_log(run_dir: Path, ours: bool) -> dict:
    """transformers' final metrics of a run: ``train_runtime`` and ``num_input_tokens_seen``."""
    if not ours:
        return json.loads((run_dir / "train_metrics.json").read_text())
    return next(log for log in reversed(read_jsonl(RunFolder(run_dir).trainer_log)) if "train_runtime" in log)


def clock(run_dir: Path, ours: bool) -> list[tuple[int, float, int]]:
    """``(step, wall time, tokens seen so far)`` at each training log."""
    if not ours:
        return [(r["step"], r["time"], r["tokens"]) for r in read_jsonl(run_dir / "clock.jsonl")]
    rows, seen = [], 0
    for record in read_jsonl(RunFolder(run_dir).metrics):
        seen += record["tokens"]
        rows.append((record["step"], record["time"], seen))
    return rows


def steady_rate(rows: list[tuple[int, float, int]], skip: int) -> tuple[float | None, str | None]:
    """Tokens per second between the first log at or after step ``skip`` and the last log."""
    rows = [row for row in rows if row[0] >= skip]
    if len(rows) < 2 or rows[-1][1] <= rows[0][1]:
        return None, None
    return (rows[-1][2] - rows[0][2]) / (rows[-1][1] - rows[0][1]), f"{rows[0][0]}-{rows[-1][0]}"


def measure(cmd: list[str], run_dir: Path, ours: bool, skip: int, cwd: Path | None = None) -> dict:
    """Run ``cmd``; its runtime and steady-state tokens/s (the log beside the run folder)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    log = run_dir.parent / f"{run_dir.name}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise UserError(f"{'ours' if ours else 'plain TRL'} failed (exit {proc.returncode}); see {log}")
    shutil.rmtree(RunFolder(run_dir).final, ignore_errors=True)  # ours saves the model: GBs per large run
    final = final_log(run_dir, ours)
    steady, window = steady_rate(clock(run_dir, ours), skip)
    tokens, runtime = int(final["num_input_tokens_seen"]), float(final["train_runtime"])
    return {
        "runtime_tokens_per_second": round(tokens / runtime, 1),
        "train_runtime_s": runtime,
        "tokens": tokens,
        "steady_tokens_per_second": round(steady, 1) if steady else None,
        "steady_steps": window,
        "wall_s": round(wall, 1),
    }


def summarise(pairs: list[dict], key: str) -> dict | None:
    """Median, min and max of the pairs' ``ratio_<key>`` (None when no pair has one)."""
    ratios = [p[f"ratio_{key}"] for p in pairs if p.get(f"ratio_{key}") is not None]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "pairs": len(ratios)}


def compare(commands: dict, work: Path, pairs: int, skip: int, log=print, cwd: Path | None = None) -> dict:
    """``pairs`` alternating pairs of ``commands["ours"](run_dir)`` and ``commands["plain"](run_dir)``."""
    results = []
    for i in range(pairs):
        order = ["ours", "plain"] if i % 2 == 0 else ["plain", "ours"]
        pair: dict = {"order": " ".join(order)}
        for side in order:
            run_dir = work / f"{side}-{i + 1}"
            pair[side] = measure(commands[side](run_dir), run_dir, side == "ours", skip, cwd)
        for key in ("runtime", "steady"):
            ours, plain = pair["ours"][f"{key}_tokens_per_second"], pair["plain"][f"{key}_tokens_per_second"]
            pair[f"ratio_{key}"] = round(ours / plain, 3) if ours and plain else None
        results.append(pair)
        log(
            f"pair {i + 1}/{pairs} ({pair['order']}): runtime ours {pair['ours']['runtime_tokens_per_second']:.0f} "
            f"vs plain {pair['plain']['runtime_tokens_per_second']:.0f} tokens/s, ratio {pair['ratio_runtime']}; "
            f"steady (steps {pair['ours']['steady_steps']}) ours {pair['ours']['steady_tokens_per_second']} vs "
            f"plain {pair['plain']['steady_tokens_per_second']}, ratio {pair['ratio_steady']}"
        )
    counted = results[1:] if len(results) >= 2 else results
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "pairs": results,
        "warm_up_pair_left_out": len(results) >= 2,
        "runtime": summarise(counted, "runtime"),
        "steady": summarise(counted, "steady"),
    }
    for key in ("runtime", "steady"):
        s = data[key]
        if s:
            log(
                f"ours / plain TRL ({key}) over {s['pairs']} pair(s) after the warm-up: median {s['median']:.3f}, "
                f"min {s['min']:.3f}, max {s['max']:.3f}"
            )
    return data


def plain_command(script: Path, run_dir: Path, script_args: list[str]) -> list[str]:
    """One plain process (no launcher) of ``script`` into ``run_dir``."""
    return [
        sys.executable,
        str(script),
        "--output_dir",
        str(run_dir),
        "--overwrite_output_dir",
        "true",
        *script_args,
    ]
