"""A ~1B-parameter Llama on one GPU: DDP (single_gpu.yaml) and ZeRO-3 (one process), tokens/s, MFU, memory.

    python benchmarks/gpu_1b.py --output gpu_1b.json          # on a GPU machine, < 8 minutes
    python benchmarks/gpu_1b.py --tiny --max_steps 2          # the same path on a CPU, for the tests

Builds random weights from a Llama config (h=2048, 16 layers, GQA 32/8 heads, MLP 8192, vocab 32000:
1.10B parameters) once into --cache, then runs the training script through ``accelerate launch`` with
bf16, SDPA attention, packed sequences of 2048 tokens and fused AdamW, for a few dozen steps under each
config. Records tokens/s, MFU (``run_summary.json``: 6N + 12 L h s against the card's peak) and peak
memory (CUDA allocator) next to ``disttune estimate``'s total for the same setup. Writes JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
CONFIGS = {"ddp": "single_gpu.yaml", "zero3": "deepspeed_zero3.yaml"}


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
    model = LlamaForCausalLM(config).to(torch.bfloat16 if size == "1b" else torch.float32)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def run_one(name: str, model_dir: Path, out: Path, args) -> dict:
    """One ``accelerate launch`` of the training script; its run_summary.json plus our estimate."""
    from disttune.bench import launch_command
    from disttune.estimate.models import count_params
    from disttune.estimate.presets import resolve_model
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate_strategy

    mp = "no" if args.tiny else "bf16"
    cmd = launch_command(
        ROOT / "accelerate_configs" / CONFIGS[name],
        ROOT / "07_distributed_training.py",
        out / name,
        1,
        mp,
        [
            "--model_name_or_path",
            str(model_dir),
            "--max_steps",
            str(args.max_steps),
            "--logging_steps",
            str(min(5, args.max_steps)),
            "--per_device_train_batch_size",
            str(args.batch),
            "--max_length",
            str(args.seq),
            "--packing",
            "true",
            "--attn_implementation",
            "sdpa",
            "--learning_rate",
            "1e-4",
            "--save_strategy",
            "no",
        ],
    )
    if not args.tiny:
        cmd += ["--optim", "adamw_torch_fused"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"strategy": name, "error": f"exit {proc.returncode}", "log": str(out / f"{name}.log")}
    summary = json.loads((out / name / "run_summary.json").read_text())
    spec = resolve_model(str(model_dir))
    est = estimate_strategy(
        name,
        ModelInfo(spec.name, count_params(spec).total, spec),
        Inputs(
            num_processes=1, mixed_precision=mp, per_device_train_batch_size=args.batch, max_length=args.seq
        ),
    )
    return {
        "strategy": name,
        "num_params": summary["num_params"],
        "tokens_per_second": summary["tokens_per_second"],
        "mfu": summary.get("mfu"),
        "device_name": summary.get("device_name"),
        "peak_memory_bytes": max(summary["peak_memory_bytes"]),
        "peak_memory_kind": summary["peak_memory_kind"],
        "estimated_total_bytes": est.total_bytes,
        "estimated_model_state_bytes": est.model_state_bytes,
        "final_loss": summary["final_loss"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (fp32), for tests")
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4, help="sequences of --seq tokens per step")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--strategies", default="ddp,zero3")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "disttune"))
    parser.add_argument("--output", default="gpu_1b.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seq, args.batch = min(args.seq, 64), min(args.batch, 2)
    out = Path(args.output).with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model("tiny" if args.tiny else "1b", Path(args.cache))
    runs = [run_one(name, model_dir, out, args) for name in args.strategies.split(",")]
    Path(args.output).write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "seq": args.seq,
                "batch": args.batch,
                "max_steps": args.max_steps,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"{'strategy':<8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'estimate GiB':>13}  device")
    for r in runs:
        if "error" in r:
            print(f"{r['strategy']:<8} failed: {r['error']} (see {r['log']})")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(
            f"{r['strategy']:<8} {r['tokens_per_second']:>10} {mfu:>7} {r['peak_memory_bytes'] / 2**30:>9.2f} "
            f"{r['estimated_total_bytes'] / 2**30:>13.2f}  {r['device_name'] or 'cpu'}"
        )
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
