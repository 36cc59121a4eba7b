"""A ~1B-parameter Llama on one GPU: tokens/s, MFU and memory per strategy, and a memory grid for the estimate.

    python benchmarks/gpu_1b.py --output gpu_1b.json                     # DDP, ZeRO-3, FSDP2 (timed: alone)
    python benchmarks/gpu_1b.py --grid --parallel 3 --output grid.json   # memory grid (not timed: parallel)
    python benchmarks/gpu_1b.py --tiny --max_steps 2                     # the same path on a CPU, for the tests

Builds random weights from a Llama config (h=2048, 16 layers, GQA 32/8 heads, MLP 8192, vocab 32000:
1.10B parameters) once into --cache, then runs the training script through ``accelerate launch`` with a
shipped config, bf16, SDPA attention, packed sequences and fused AdamW. Records tokens/s, MFU
(``run_summary.json``: 6N + 12 L h s with per-document s, against the card's peak), peak allocated and peak
reserved memory (CUDA allocator), next to ``disttune estimate``'s figures for the same setup (allocated:
``allocated_bytes``; reserved: ``reserved_bytes``, for the allocator the cell runs with).

The grid (``--grid``): DDP on one GPU, 3 steps per cell, over sequence length x batch, gradient
checkpointing on/off, LoRA, Liger's kernels (TRL 1.16 keeps its own chunked loss), and the allocator with
and without expandable segments; cells run ``--parallel`` at a time (memory is per process; nothing in it is
timed). tests/unit/test_estimate_calibration.py checks the estimate against the results, cell by cell.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SIZES = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
    },
}
CONFIGS = {"ddp": "single_gpu.yaml", "zero3": "deepspeed_zero3.yaml", "fsdp2": "fsdp2.yaml"}
ESTIMATE_NAMES = {"ddp": "ddp", "zero3": "zero3", "fsdp2": "fsdp2"}
# The grid: (label, strategy, seq, batch, extra script args, estimate inputs, environment)
GRID = [
    *[(f"s{s}-b4", "ddp", s, 4, [], {}, {}) for s in (512, 1024)],
    ("s2048-b1", "ddp", 2048, 1, [], {}, {}),
    ("s2048-b4", "ddp", 2048, 4, [], {}, {}),
    (
        "s2048-b4-checkpointing",
        "ddp",
        2048,
        4,
        ["--gradient_checkpointing", "true"],
        {"gradient_checkpointing": True},
        {},
    ),
    (
        "s2048-b4-lora16",
        "ddp",
        2048,
        4,
        ["--use_peft", "true", "--lora_r", "16", "--lora_target_modules", "all-linear"],
        {"lora_r": 16},
        {},
    ),
    ("s2048-b4-liger", "ddp", 2048, 4, ["--use_liger_kernel", "true"], {"use_liger_kernel": True}, {}),
    (
        "zero3-s2048-b4-liger",
        "zero3",
        2048,
        4,
        ["--use_liger_kernel", "true"],
        {"use_liger_kernel": True},
        {},
    ),
    ("zero3-s2048-b4", "zero3", 2048, 4, [], {}, {}),
    (
        "s2048-b4-fixed-segments",
        "ddp",
        2048,
        4,
        [],
        {"allocator": "fixed"},
        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"},
    ),
]


def build_model(size: str, cache: Path) -> Path:
    """A local checkpoint of random weights for ``size`` with the tiny preset's tokenizer (built once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from disttune.train.tiny import build_tiny_tokenizer

    target = cache / f"llama-{size}"
    if (target / "config.json").is_file():
        return target
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **SIZES[size],
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1.1B on a GPU: seconds
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if size == "1b" else torch.float32).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def estimate(strategy: str, model_dir: Path, mp: str, batch: int, seq: int, **inputs):
    from disttune.estimate.models import count_params
    from disttune.estimate.presets import resolve_model
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate_strategy

    spec = resolve_model(str(model_dir))
    return estimate_strategy(
        ESTIMATE_NAMES[strategy],
        ModelInfo(spec.name, count_params(spec).total, spec),
        Inputs(
            num_processes=1,
            mixed_precision=mp,
            per_device_train_batch_size=batch,
            max_length=seq,
            packing=True,  # the runs pass --packing true (TRL's padding-free rows)
            **inputs,
        ),
    )


def run_one(
    label: str,
    strategy: str,
    model_dir: Path,
    out: Path,
    args,
    seq: int,
    batch: int,
    extra=(),
    est_inputs=None,
    env=None,
    steps=None,
) -> dict:
    """One ``accelerate launch`` of the training script; its run_summary.json next to our estimate."""
    from disttune.bench import launch_command

    mp = "no" if args.tiny else "bf16"
    steps = steps or args.max_steps
    script_args = [
        "--model_name_or_path",
        str(model_dir),
        "--max_steps",
        str(steps),
        "--logging_steps",
        str(min(5, steps)),
        "--per_device_train_batch_size",
        str(batch),
        "--max_length",
        str(seq),
        "--packing",
        "true",
        "--attn_implementation",
        "sdpa",
        "--learning_rate",
        "1e-4",
        "--save_strategy",
        "no",
        *extra,
    ]
    if args.grid:
        script_args += ["--heldout_examples", "0"]
    cmd = launch_command(
        ROOT / "accelerate_configs" / CONFIGS[strategy],
        ROOT / "07_distributed_training.py",
        out / label,
        1,
        None if not args.tiny else mp,
        script_args,
    )
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    (out / f"{label}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {
            "label": label,
            "strategy": strategy,
            "error": f"exit {proc.returncode}",
            "log": str(out / f"{label}.log"),
        }
    shutil.rmtree(out / label / "final", ignore_errors=True)  # 4.4 GB per 1.1B run: the disk is not endless
    return record(
        label,
        strategy,
        out / label,
        model_dir,
        "no" if args.tiny else "bf16",
        seq,
        batch,
        est_inputs,
        wall=time.perf_counter() - start,
    )


def record(
    label, strategy, run_dir: Path, model_dir: Path, mp: str, seq: int, batch: int, est_inputs=None, wall=None
) -> dict:
    """A finished run's figures (``run_summary.json``) next to the estimate for the same setup."""
    summary = json.loads((run_dir / "run_summary.json").read_text())
    est = estimate(strategy, model_dir, mp, batch, seq, **(est_inputs or {}))
    reserved = (summary.get("peak_memory_reserved_bytes") or [None])[0]
    return {
        "label": label,
        "strategy": strategy,
        "seq": seq,
        "batch": batch,
        "num_params": summary["num_params"],
        "tokens_per_second": summary["tokens_per_second"],
        "mfu": summary.get("mfu"),
        "flops_per_token": summary.get("flops_per_token"),
        "flops_per_token_formula": summary.get("flops_per_token_formula"),
        "device_name": summary.get("device_name"),
        "peak_allocated_bytes": max(summary["peak_memory_bytes"]),
        "peak_reserved_bytes": reserved,
        "estimated_allocated_bytes": est.allocated_bytes,
        "estimated_reserved_bytes": est.reserved_bytes,
        "estimated_total_bytes": est.total_bytes,
        "allocator": next((n for n in summary.get("notes", []) if n.startswith("CUDA allocator")), None),
        "final_loss": summary["final_loss"],
        "eval": summary.get("eval"),
        "wall_seconds": round(wall, 1) if wall is not None else None,
    }


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if value is not None else "-"


def table(runs: list[dict]) -> str:
    lines = [
        f"{'run':<26} {'tokens/s':>9} {'MFU':>6} {'alloc GiB':>9} {'est':>6} {'reserved GiB':>12} {'est':>6}"
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['label']:<26} failed: {r['error']} (see {r['log']})")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(
            f"{r['label']:<26} {r['tokens_per_second'] or 0:>9.0f} {mfu:>6} {_gib(r['peak_allocated_bytes']):>9} "
            f"{_gib(r['estimated_allocated_bytes']):>6} {_gib(r['peak_reserved_bytes']):>12} "
            f"{_gib(r['estimated_reserved_bytes']):>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (fp32), for tests")
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4, help="sequences of --seq tokens per step")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--strategies", default="ddp,zero3,fsdp2")
    parser.add_argument("--grid", action="store_true", help="the memory grid (DDP, 3 steps per cell)")
    parser.add_argument("--cells", help="grid cells to run, comma-separated labels (default: all)")
    parser.add_argument("--parallel", type=int, default=1, help="grid cells at a time")
    parser.add_argument(
        "--collect", nargs="*", metavar="STRATEGY:RUN_DIR", help="report finished runs (no launch)"
    )
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "disttune"))
    parser.add_argument("--output", default="gpu_1b.json")
    args = parser.parse_args(argv)
    out = Path(args.output).with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model("tiny" if args.tiny else "1b", Path(args.cache))
    if args.collect:
        mp = "no" if args.tiny else "bf16"
        runs = []
        for item in args.collect:
            strategy, run_dir = item.split(":", 1)
            runs.append(record(strategy, strategy, Path(run_dir), model_dir, mp, args.seq, args.batch))
    elif args.grid:
        cells = [c for c in GRID if not args.cells or c[0] in args.cells.split(",")]
        if args.tiny:  # Liger needs CUDA (Triton kernels): left out on the CPU
            cells = [
                (label, strategy, min(seq, 64), min(batch, 2), *rest)
                for label, strategy, seq, batch, *rest in cells
                if "liger" not in label
            ]
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(
                pool.map(
                    lambda c: run_one(c[0], c[1], model_dir, out, args, *c[2:], steps=3),
                    cells,
                )
            )
    else:
        if args.tiny:
            args.seq, args.batch = min(args.seq, 64), min(args.batch, 2)
        runs = [run_one(s, s, model_dir, out, args, args.seq, args.batch) for s in args.strategies.split(",")]
    Path(args.output).write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "seq": args.seq,
                "batch": args.batch,
                "max_steps": args.max_steps,
                "grid": args.grid,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(table(runs))
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
