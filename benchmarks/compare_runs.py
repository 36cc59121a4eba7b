"""Two finished runs of the same setup side by side: their losses step by step and their final weights.

    python benchmarks/compare_runs.py RUN_A RUN_B [--rel_tol 2e-2]

Reads each run folder's metrics.jsonl and final/ (safetensors, one tensor at a time) and prints the largest
loss difference and the largest relative weight difference (|a - b| / max|a|, per tensor); exits 1 when a
weight differs beyond --rel_tol (bf16 keeps 8 bits of mantissa: 2**-7 = 0.8% per value; a few optimizer
steps apart accumulate a few of those). Used by benchmarks/gpu_check.sh to prove a fast path equal to the
plain one (Liger on and off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from disttune.run_folder import RunFolder, read_jsonl
    from disttune.train.save import SavedTensors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--rel_tol", type=float, default=2e-2)
    args = parser.parse_args()
    a, b = RunFolder(args.run_a), RunFolder(args.run_b)
    losses_a = {r["step"]: r["loss"] for r in read_jsonl(a.metrics) if r.get("loss") is not None}
    losses_b = {r["step"]: r["loss"] for r in read_jsonl(b.metrics) if r.get("loss") is not None}
    steps = sorted(set(losses_a) & set(losses_b))
    worst_loss = max((abs(losses_a[s] - losses_b[s]) / abs(losses_b[s]) for s in steps), default=None)
    tensors_a, tensors_b = SavedTensors.open(a.final), SavedTensors.open(b.final)
    if tensors_a is None or tensors_b is None or set(tensors_a) != set(tensors_b):
        print("the final models hold different tensors (or none)")
        return 1
    worst, name = 0.0, None
    for key in tensors_a:
        x, y = tensors_a[key].float(), tensors_b[key].float()
        rel = float((x - y).abs().max() / x.abs().max().clamp_min(1e-12))
        if rel > worst:
            worst, name = rel, key
    print(f"loss: {len(steps)} common steps, largest relative difference {worst_loss}")
    print(f"weights: largest relative difference {worst:.3g} ({name}), tolerance {args.rel_tol:g}")
    return 0 if worst <= args.rel_tol else 1


if __name__ == "__main__":
    sys.exit(main())
