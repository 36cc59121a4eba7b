"""Scaling on this machine: tokens/s at 1 and 2 processes for the same global batch, and the efficiency.

    python benchmarks/scaling.py --global_batch 16 --max_steps 30 --repeats 2

1 process: the training script as a plain process, micro batch = global batch. 2 processes: DDP over gloo
through ``accelerate launch`` (multi_gpu_ddp.yaml), micro batch = global / 2. Throughput is
transformers' own ``num_input_tokens_seen / train_runtime``. Efficiency = tps(2) / (2 x tps(1)).
Best of ``--repeats`` runs per setting (the least disturbed one). Writes scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead_vs_trl import ROOT, tokens_per_second  # noqa: E402

from disttune.bench import launch_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global_batch", type=int, default=16)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="scaling.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scaling-"))
    common = ["--max_steps", str(args.max_steps), "--logging_steps", "5"]
    script = ROOT / "07_distributed_training.py"
    results = {}
    for n in (1, 2):
        out_dir = tmp / f"n{n}"
        micro = [
            "--per_device_train_batch_size",
            str(args.global_batch // n),
            "--overwrite_output_dir",
            "true",
        ]
        runs = []
        for _ in range(args.repeats):
            if n == 1:
                cmd = [sys.executable, script, "--output_dir", str(out_dir), *micro, *common]
            else:
                cmd = launch_command("ddp", script, out_dir, 2, "no", [*micro, *common])
            runs.append(tokens_per_second(cmd))
            print(f"{n} process(es): {runs[-1]:.0f} tokens/s", flush=True)
        results[n] = {"runs": runs, "best": max(runs)}
    efficiency = results[2]["best"] / (2 * results[1]["best"])
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "global_batch": args.global_batch,
        "max_steps": args.max_steps,
        "results": results,
        "efficiency": efficiency,
    }
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"tokens/s: 1 process {results[1]['best']:.0f}, 2 processes {results[2]['best']:.0f}; "
        f"scaling efficiency {efficiency:.2f} (1.00 = linear)"
    )


if __name__ == "__main__":
    main()
