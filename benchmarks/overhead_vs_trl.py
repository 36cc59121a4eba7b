"""Overhead vs the peer: our training script and plain TRL (``plain_trl_sft.py``), alternating, N times each.

    python benchmarks/overhead_vs_trl.py --repeats 5 --max_steps 40

Both run as one plain process on this machine (no launcher), same tiny checkpoint, data, config and
steps. Each side's throughput is transformers' own final metrics (``num_input_tokens_seen`` /
``train_runtime``, the whole ``trainer.train()`` call), read from what both print: measured the same way. Prints the ratio
ours / plain per pair with its median, min and max, and writes JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = re.compile(r"'train_runtime': '?([0-9.]+)")
TOKENS = re.compile(r"'num_input_tokens_seen': '?([0-9]+)")


def tokens_per_second(cmd: list[str]) -> float:
    """Run ``cmd``; tokens seen / train runtime from the final metrics transformers printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    text = proc.stdout + proc.stderr
    runtime, tokens = RUNTIME.findall(text), TOKENS.findall(text)
    if proc.returncode != 0 or not runtime or not tokens:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return int(tokens[-1]) / float(runtime[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--output", default="overhead_vs_trl.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    steps = ["--max_steps", str(args.max_steps)]
    ours_cmd = [
        sys.executable,
        str(ROOT / "07_distributed_training.py"),
        "--output_dir",
        str(tmp / "ours"),
        "--overwrite_output_dir",
        "true",
        "--logging_steps",
        "5",
        *steps,
    ]
    plain_cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "plain_trl_sft.py"),
        "--output_dir",
        str(tmp / "plain"),
        *steps,
    ]
    pairs = []
    for i in range(args.repeats):
        order = (
            [("ours", ours_cmd), ("plain", plain_cmd)]
            if i % 2 == 0
            else [("plain", plain_cmd), ("ours", ours_cmd)]
        )
        pair = {name: tokens_per_second(cmd) for name, cmd in order}
        pair["ratio"] = pair["ours"] / pair["plain"]
        pairs.append(pair)
        print(
            f"pair {i + 1}/{args.repeats}: ours {pair['ours']:.0f} tokens/s, plain TRL {pair['plain']:.0f} "
            f"tokens/s, ratio {pair['ratio']:.3f}",
            flush=True,
        )
    ratios = [p["ratio"] for p in pairs]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "max_steps": args.max_steps,
        "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"ours / plain TRL tokens/s over {len(ratios)} pairs: median {result['ratio_median']:.3f}, "
        f"min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f} (target >= 0.97)"
    )


if __name__ == "__main__":
    main()
