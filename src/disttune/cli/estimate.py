"""``disttune estimate``: GPU memory per strategy for a model and setup, and which strategy to pick.

disttune estimate --model meta-llama/Llama-3.1-8B --num_processes 8 --gradient_checkpointing
disttune estimate --model path/to/model_or_config.json --lora_r 16 --json
disttune estimate --num_params 7.5e9 --num_processes 64
disttune estimate --model meta-llama/Llama-3.1-70B --gpu H100-80GB --host_memory_gb 1024 --gradient_checkpointing
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

from disttune.errors import UserError


def _strategies(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``estimate`` to the ``disttune`` parser."""
    from disttune.strategies import NAMES

    p = subparsers.add_parser(
        "estimate",
        help="GPU memory per strategy (DDP, ZeRO-1/2/3, offload, FSDP2) and a recommendation",
        description="Per-GPU memory for each strategy: parameters, gradients, optimizer states, activations, "
        "the loss's peak and the buffers DeepSpeed/torch add, phase by phase (peak allocated), the CUDA "
        "caching allocator's cached blocks (peak reserved), and the CUDA context and NCCL buffers; "
        "reserved + context + NCCL against the GPU (--gpu or --gpu_memory_gb) with 10% headroom; offloaded "
        "states against --host_memory_gb per node. docs/memory.md says where each byte goes.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="a preset name (see --list_models), a config.json, or a model folder")
    src.add_argument("--num_params", type=float, help="parameter count, e.g. 7.5e9 (shapes then unknown)")
    p.add_argument("--list_models", action="store_true", help="list the built-in architectures and exit")
    p.add_argument("--hidden_size", type=int, help="with --num_params: for activations")
    p.add_argument("--num_hidden_layers", type=int, help="with --num_params: for activations")
    p.add_argument("--num_processes", type=int, default=8, help="total GPUs/processes (default 8)")
    p.add_argument("--num_machines", type=int, default=1, help="nodes; host RAM under offload is per node")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="bf16")
    p.add_argument("--optimizer", choices=("adamw", "adamw_8bit"), default="adamw")
    p.add_argument("--per_device_train_batch_size", type=int, default=1)
    p.add_argument("--max_length", type=int, default=2048, help="sequence length in tokens (default 2048)")
    _add_run_arguments(p)
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu",
        help="a card by name, with the memory its driver reports: H100-80GB, H200, "
        "A100-40GB, ... (--list_gpus)",
    )
    gpu.add_argument("--gpu_memory_gb", type=float, help="memory per GPU in GiB (default 80)")
    p.add_argument("--list_gpus", action="store_true", help="list the known cards and their memory, and exit")
    p.add_argument(
        "--host_memory_gb",
        type=float,
        help="RAM per node in GiB (`free -g`); offload strategies must fit it (default: not checked)",
    )
    p.add_argument(
        "--strategies",
        type=_strategies,
        help=f"comma-separated subset of {', '.join(NAMES)} (default: all), e.g. ddp,zero2,zero3",
    )
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on stdout")
    p.set_defaults(run=run)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that describe how the run computes: checkpointing, loss, kernels, attention, allocator."""
    ckpt = p.add_mutually_exclusive_group()
    ckpt.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="full activation checkpointing: each layer's input kept, the layer recomputed",
    )
    ckpt.add_argument(
        "--selective_checkpointing",
        action="store_true",
        help="torchtitan's selective (op) checkpointing: every other matmul output kept",
    )
    loss = p.add_mutually_exclusive_group()
    loss.add_argument(
        "--loss",
        choices=("chunked", "full", "fused"),
        default="chunked",
        help="how the loss is computed: chunked (TRL's SFTTrainer, the training script: log-probabilities "
        "tile by tile, never the whole logits; default), full (transformers' loss on the whole logits) or "
        "fused (Liger's fused linear cross-entropy, as transformers' Trainer --use_liger_kernel applies it)",
    )
    loss.add_argument(
        "--fused_cross_entropy",
        action="store_const",
        const="fused",
        dest="loss",
        help="the same as --loss fused",
    )
    p.add_argument(
        "--use_liger_kernel",
        action="store_true",
        help="Liger's RMSNorm, SwiGLU and RoPE kernels (the script's --use_liger_kernel true)",
    )
    p.add_argument(
        "--attn_implementation",
        choices=("sdpa", "flash_attention_2", "eager"),
        default="sdpa",
        help="the attention (default sdpa: with packed or padded rows it saves a 16-bit mask per layer)",
    )
    p.add_argument(
        "--packing",
        action="store_true",
        help="TRL --packing: several sequences per row, the batch flattened into one (padding-free)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="what the weights are loaded as (the script's --dtype; default float32, autocast to 16-bit)",
    )
    p.add_argument(
        "--allocator",
        choices=("expandable", "fixed"),
        default="expandable",
        help="the CUDA caching allocator's segments: expandable (PYTORCH_CUDA_ALLOC_CONF="
        "expandable_segments:True, the script's default on CUDA) or fixed (torch's own default)",
    )
    p.add_argument("--lora_r", type=int, help="LoRA rank on q,k,v,o,gate,up,down (frozen base as loaded)")


def _model(args: argparse.Namespace):
    from disttune.estimate.models import count_params
    from disttune.estimate.presets import resolve_model
    from disttune.estimate.strategies import ModelInfo

    if args.model is not None:
        if args.hidden_size is not None or args.num_hidden_layers is not None:
            raise UserError(
                "--hidden_size/--num_hidden_layers go with --num_params; --model already has them."
            )
        spec = resolve_model(args.model)
        return ModelInfo(spec.name, count_params(spec).total, spec)
    if args.num_params is None:
        raise UserError("give --model NAME_OR_PATH or --num_params N (or --list_models to see the names).")
    if not (math.isfinite(args.num_params) and 1 <= args.num_params <= 1e15):
        raise UserError(f"--num_params must be a positive count up to 1e15, got {args.num_params:g}.")
    for flag in ("hidden_size", "num_hidden_layers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be a positive whole number, got {value}.")
    return ModelInfo(
        f"--num_params {args.num_params:.4g}",
        int(args.num_params),
        None,
        args.hidden_size,
        args.num_hidden_layers,
    )


def _list(args: argparse.Namespace) -> int:
    """``--list_models`` / ``--list_gpus``: the built-in architectures or cards, as text or JSON."""
    from disttune.estimate import models
    from disttune.estimate.gpus import GPUS_MIB
    from disttune.estimate.presets import PRESETS

    if args.list_models:
        rows = {name: models.count_params(spec) for name, spec in PRESETS.items()}
        if args.json:
            print(
                json.dumps(
                    {
                        "models": [
                            {
                                "name": k,
                                "num_params": c.total,
                                "active_params": c.active,
                                **asdict(PRESETS[k]),
                            }
                            for k, c in rows.items()
                        ]
                    },
                    indent=2,
                )
            )
        else:
            width = max(map(len, rows))
            print(
                "\n".join(
                    f"{k.ljust(width)}  {c.total / 1e9:7.2f}B  ({c.total:,})"
                    + (f"  {c.active / 1e9:.2f}B active" if c.active != c.total else "")
                    for k, c in rows.items()
                )
            )
        return 0
    if args.list_gpus:
        if args.json:
            print(
                json.dumps(
                    {"gpus": {k: {"memory_mib": v, "memory_gib": v / 1024} for k, v in GPUS_MIB.items()}}
                )
            )
        else:
            print("\n".join(f"{k:10s} {v / 1024:6.1f} GiB ({v:,} MiB)" for k, v in GPUS_MIB.items()))
    return 0


def run(args: argparse.Namespace) -> int:
    """Estimate every strategy and print a table (GiB) or JSON."""
    from disttune.estimate import memory, models, strategies
    from disttune.estimate.gpus import gpu_memory_gib
    from disttune.estimate.recommend import recommend, rule_of_thumb

    if args.list_models or args.list_gpus:
        return _list(args)
    model = _model(args)
    gpu_name, gpu_gib = gpu_memory_gib(args.gpu) if args.gpu else (None, args.gpu_memory_gb or 80.0)
    inputs = strategies.Inputs(
        num_processes=args.num_processes,
        num_machines=args.num_machines,
        mixed_precision=args.mixed_precision,
        optimizer=args.optimizer,
        per_device_train_batch_size=args.per_device_train_batch_size,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_r=args.lora_r,
        gpu_memory_gb=gpu_gib,
        selective_checkpointing=args.selective_checkpointing,
        host_memory_gb=args.host_memory_gb,
        gpu_name=gpu_name,
        loss=args.loss,
        use_liger_kernel=args.use_liger_kernel,
        attn_implementation=args.attn_implementation,
        packing=args.packing,
        allocator=args.allocator,
        model_dtype=args.dtype,
    )
    results = strategies.estimate(model, inputs, args.strategies or memory.STRATEGIES)
    rec = recommend(results, model, inputs)
    thumb = rule_of_thumb(results)
    trainable = strategies.trainable_params(model, inputs)
    active = models.count_params(model.spec).active if model.spec else model.num_params
    if args.json:
        print(
            json.dumps(
                {
                    "model": {
                        "name": model.name,
                        "num_params": model.num_params,
                        "trainable_params": trainable,
                        "active_params": active,
                        "train_flops_per_token": 6 * active,
                        "spec": asdict(model.spec) if model.spec else None,
                    },
                    "inputs": {**asdict(inputs), "headroom": strategies.HEADROOM},
                    "strategies": [asdict(r) for r in results],
                    "recommendation": asdict(rec),
                    "rule_of_thumb": thumb,
                    "term_sources": memory.TERM_SOURCES,
                },
                indent=2,
            )
        )
        return 0
    print(render(model, inputs, results, rec, thumb, trainable))
    return 0


def _fits(r) -> str:
    if r.fits:
        return "yes"
    return "no" + (" (host)" if r.gpu_fits else " (gpu+host)" if r.host_fits is False else "")


def _setup_line(model, inputs, trainable) -> str:
    """The model and the run as estimated, in one sentence."""
    from disttune.estimate.models import count_params

    lora = f", LoRA r={inputs.lora_r} ({trainable:,} trainable)" if inputs.lora_r else ""
    ckpt = (
        ", gradient checkpointing"
        if inputs.gradient_checkpointing
        else ", selective checkpointing"
        if inputs.selective_checkpointing
        else ""
    )
    ckpt += ", packed" if inputs.packing else ""
    ckpt += ", liger kernels" if inputs.use_liger_kernel else ""
    active = model.spec and count_params(model.spec).active
    moe = f" ({active:,} active per token)" if active and active != model.num_params else ""
    dtype = "" if inputs.model_dtype == "float32" else f", weights in {inputs.model_dtype}"
    return (
        f"{model.name}: {model.num_params:,} parameters{moe}{lora}; {inputs.num_processes} GPUs on "
        f"{inputs.num_machines} node(s), {inputs.mixed_precision}{dtype}, {inputs.optimizer}, batch "
        f"{inputs.per_device_train_batch_size} x {inputs.max_length} tokens{ckpt}, "
        f"{inputs.attn_implementation} attention, {LOSS_WORDS[inputs.loss]}."
    )


LOSS_WORDS = {
    "chunked": "TRL's chunked loss",
    "full": "the loss on the whole logits",
    "fused": "Liger's fused cross-entropy",
}
ALLOCATOR_WORDS = {
    "expandable": "CUDA allocator: expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, "
    "the training script's default on CUDA)",
    "fixed": "CUDA allocator: fixed segments (expandable_segments:False, torch's default); the cached blocks "
    "assume the tokens per batch vary between steps",
}


def render(model, inputs, results, rec, thumb, trainable) -> str:
    """Aligned table in GiB, then what does not fit and why, the recommendation and the rule-of-thumb line."""
    from disttune.estimate.strategies import GIB, HEADROOM

    def g(n):
        return "?" if n is None else f"{n / GIB:.1f}"

    head = ["strategy", "params", "grads", "optim", "activ", "alloc", "reserved", "total", "cpu/node", "fits"]
    rows = [head] + [
        [
            r.name,
            g(r.params_bytes),
            g(r.grads_bytes),
            g(r.optimizer_bytes),
            g(r.activation_bytes),
            g(r.allocated_bytes),
            g(r.reserved_bytes),
            g(r.total_bytes),
            "-" if r.cpu_bytes_per_node is None else g(r.cpu_bytes_per_node),
            _fits(r),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    card = (
        f"{inputs.gpu_name} ({inputs.gpu_memory_gb:.1f} GiB)"
        if inputs.gpu_name
        else f"{inputs.gpu_memory_gb:g} GiB"
    )
    host = (
        f"; offloaded states <= {1 - HEADROOM:.0%} of {inputs.host_memory_gb:g} GiB host RAM per node"
        if inputs.host_memory_gb
        else ""
    )
    lines = [
        _setup_line(model, inputs, trainable),
        ALLOCATOR_WORDS[inputs.allocator] + ".",
        f"GiB per GPU; fits = total <= {1 - HEADROOM:.0%} of {card}{host}.",
        "",
    ]
    lines += [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    if any(r.activation_bytes is None for r in results):
        lines.append(
            "\nActivations unknown (not in total): add --hidden_size and --num_hidden_layers, or use --model."
        )
    lines.append(
        "\nalloc = the peak of live tensors (torch.cuda.max_memory_allocated); reserved = alloc + the blocks the "
        "caching allocator keeps cached (max_memory_reserved); total = reserved + CUDA context + NCCL buffers."
    )
    return "\n".join(lines + _notes(inputs, results, rec, thumb))


def _notes(inputs, results, rec, thumb) -> list[str]:
    lines = [f"{r.name}: {r.why}." for r in results if r.host_fits is False]
    if inputs.host_memory_gb is None and any(r.cpu_bytes_per_node for r in results):
        lines.append(
            "Host RAM not checked: give --host_memory_gb (per node) to check the offload strategies."
        )
    lines.append("\nRecommendation: " + rec.reason)
    lines += [f"  - {s}" for s in rec.suggestions]
    if thumb:
        parts = [
            f"{name.upper().replace('ZERO', 'ZeRO-')} ~{v['rule_of_thumb']:.0%} (here {v['exact']:.0%})"
            for name, v in thumb.items()
        ]
        lines.append("Rule of thumb, saving vs DDP: " + ", ".join(parts) + ".")
    return lines
