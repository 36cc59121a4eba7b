"""``disttune estimate``: GPU memory per strategy for a model and setup, and which strategy to pick.

    disttune estimate --model meta-llama/Llama-3.1-8B --num_processes 8 --gradient_checkpointing
    disttune estimate --model path/to/model_or_config.json --lora_r 16 --json
    disttune estimate --num_params 7.5e9 --num_processes 64
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from disttune.errors import UserError


def _strategies(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``estimate`` to the ``disttune`` parser."""
    p = subparsers.add_parser(
        "estimate", help="GPU memory per strategy (DDP, ZeRO-1/2/3, offload, FSDP2) and a recommendation",
        description="Per-GPU memory for each strategy: parameters, gradients, optimizer states, activations "
                    "and the buffers DeepSpeed/torch add, against --gpu_memory_gb with 10%% headroom.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="a preset name (see --list_models), a config.json, or a model folder")
    src.add_argument("--num_params", type=float, help="parameter count, e.g. 7.5e9 (shapes then unknown)")
    p.add_argument("--list_models", action="store_true", help="list the built-in architectures and exit")
    p.add_argument("--hidden_size", type=int, help="with --num_params: for activations")
    p.add_argument("--num_hidden_layers", type=int, help="with --num_params: for activations")
    p.add_argument("--num_processes", type=int, default=8, help="total GPUs/processes (default 8)")
    p.add_argument("--num_machines", type=int, default=1, help="nodes; CPU RAM under offload is per node")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="bf16")
    p.add_argument("--optimizer", choices=("adamw", "adamw_8bit"), default="adamw")
    p.add_argument("--per_device_train_batch_size", type=int, default=1)
    p.add_argument("--max_length", type=int, default=2048, help="sequence length in tokens (default 2048)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--lora_r", type=int, help="LoRA rank on q,k,v,o,gate,up,down (frozen base in 16-bit)")
    p.add_argument("--gpu_memory_gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    p.add_argument("--strategies", type=_strategies, help="comma-separated subset, e.g. ddp,zero2,zero3")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on stdout")
    p.set_defaults(run=run)


def _model(args: argparse.Namespace):
    from disttune.estimate.models import count_params, resolve_model
    from disttune.estimate.strategies import ModelInfo

    if args.model is not None:
        if args.hidden_size is not None or args.num_hidden_layers is not None:
            raise UserError("--hidden_size/--num_hidden_layers go with --num_params; --model already has them.")
        spec = resolve_model(args.model)
        return ModelInfo(spec.name, count_params(spec).total, spec)
    if args.num_params is None:
        raise UserError("give --model NAME_OR_PATH or --num_params N (or --list_models to see the names).")
    if not args.num_params >= 1:
        raise UserError(f"--num_params must be a positive count, got {args.num_params:g}.")
    for flag in ("hidden_size", "num_hidden_layers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be a positive whole number, got {value}.")
    return ModelInfo(f"--num_params {args.num_params:.4g}", int(args.num_params), None, args.hidden_size,
                     args.num_hidden_layers)


def run(args: argparse.Namespace) -> int:
    """Estimate every strategy and print a table (GiB) or JSON."""
    from disttune.estimate import memory, models, strategies
    from disttune.estimate.recommend import recommend, rule_of_thumb

    if args.list_models:
        rows = {name: models.count_params(spec).total for name, spec in models.PRESETS.items()}
        if args.json:
            print(json.dumps({"models": [{"name": k, "num_params": v, **asdict(models.PRESETS[k])}
                                         for k, v in rows.items()]}, indent=2))
        else:
            width = max(map(len, rows))
            print("\n".join(f"{k.ljust(width)}  {v / 1e9:7.2f}B  ({v:,})" for k, v in rows.items()))
        return 0
    model = _model(args)
    inputs = strategies.Inputs(args.num_processes, args.num_machines, args.mixed_precision, args.optimizer,
                               args.per_device_train_batch_size, args.max_length, args.gradient_checkpointing,
                               args.lora_r, args.gpu_memory_gb)
    results = strategies.estimate(model, inputs, args.strategies or memory.STRATEGIES)
    rec = recommend(results, model, inputs)
    thumb = rule_of_thumb(results)
    trainable = strategies.trainable_params(model, inputs)
    if args.json:
        print(json.dumps({
            "model": {"name": model.name, "num_params": model.num_params, "trainable_params": trainable,
                      "spec": asdict(model.spec) if model.spec else None},
            "inputs": {**asdict(inputs), "headroom": strategies.HEADROOM},
            "strategies": [asdict(r) for r in results],
            "recommendation": asdict(rec),
            "rule_of_thumb": thumb,
            "term_sources": memory.TERM_SOURCES,
        }, indent=2))
        return 0
    print(render(model, inputs, results, rec, thumb, trainable))
    return 0


def render(model, inputs, results, rec, thumb, trainable) -> str:
    """Aligned table in GiB, then the recommendation and the rule-of-thumb line."""
    from disttune.estimate.strategies import GIB, HEADROOM

    def g(n):
        return "?" if n is None else f"{n / GIB:.1f}"

    head = ["strategy", "params", "grads", "optim", "states", "activ", "buffers", "total", "cpu/node", "fits"]
    rows = [head] + [[r.name, g(r.params_bytes), g(r.grads_bytes), g(r.optimizer_bytes), g(r.model_state_bytes),
                      g(r.activation_bytes), g(r.buffer_bytes), g(r.total_bytes),
                      "-" if r.cpu_bytes_per_node is None else g(r.cpu_bytes_per_node),
                      "yes" if r.fits else "no"] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lora = f", LoRA r={inputs.lora_r} ({trainable:,} trainable)" if inputs.lora_r else ""
    lines = [f"{model.name}: {model.num_params:,} parameters{lora}; {inputs.num_processes} GPUs on "
             f"{inputs.num_machines} node(s), {inputs.mixed_precision}, {inputs.optimizer}, batch "
             f"{inputs.per_device_train_batch_size} x {inputs.max_length} tokens"
             f"{', gradient checkpointing' if inputs.gradient_checkpointing else ''}.",
             f"GiB per GPU; fits = total <= {1 - HEADROOM:.0%} of {inputs.gpu_memory_gb:g} GiB.", ""]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
              for row in rows]
    if any(r.activation_bytes is None for r in results):
        lines.append("\nActivations unknown (not in total): add --hidden_size and --num_hidden_layers, or use --model.")
    lines.append("\nRecommendation: " + rec.reason)
    lines += [f"  - {s}" for s in rec.suggestions]
    if thumb:
        parts = [f"{name.upper().replace('ZERO', 'ZeRO-')} ~{v['rule_of_thumb']:.0%} (here {v['exact']:.0%})"
                 for name, v in thumb.items()]
        lines.append("Rule of thumb, saving vs DDP: " + ", ".join(parts) + ".")
    return "\n".join(lines)
