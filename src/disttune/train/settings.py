"""Every setting of a run, resolved once before anything is loaded: ``resolve(argv) -> Settings``.

The arguments come from ``args.parse_args``; then, in order: the precision of the launch (one source: the
accelerate config or ``--mixed_precision``; ``--bf16``/``--fp16`` may only agree), the CPU and CUDA defaults
(gloo, fused AdamW, expandable segments), the evaluation settings, the accelerate config's accumulation and
clipping, the output folder and resume target (``prepare.py``), the data set's path, and the batch plan,
computed here once from the launcher's world size (``plan.py``), the learning rate scaled with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch

from disttune.errors import UserError
from disttune.plan import BatchPlan, global_batch_size, scale_learning_rate, with_derived
from disttune.run_folder import RunFolder
from disttune.train import reconcile
from disttune.train.args import DisttuneArguments, explicit_names, parse_args, read_recipe
from disttune.train.data import check_dataset_name
from disttune.train.distributed import (
    cpu_distributed_defaults,
    deepspeed_auto_sizes,
    default_allocator,
    promote_fsdp_on_cpu,
    world_size_from_env,
)
from disttune.train.evaluate import evaluation_settings
from disttune.train.guards import apply_collective_timeout
from disttune.train.kernels import check_attention
from disttune.train.prepare import prepare_run
from disttune.train.restarts import init_restarted_process_group


@dataclass
class Settings:
    """A run's resolved settings: the parsed arguments, the batch plan, the run folder, and what was
    adopted or changed on the way (``notes``: printed before the plan, kept in run_summary.json)."""

    script_args: DisttuneArguments
    training_args: object  # trl.SFTConfig
    model_args: object  # trl.ModelConfig
    plan: BatchPlan
    folder: RunFolder
    notes: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)  # the argument names the user set (command line, recipe)


def batch_plan(training_args, world_size: int) -> BatchPlan:
    """The run's batch layout: global batch = micro batch x world size x accumulation
    (``plan.global_batch_size``); tokens per step <= global batch x max_length (``plan.with_derived``)."""
    per_device, accumulation = (
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
    )
    layout = BatchPlan(
        world_size,
        per_device,
        accumulation,
        global_batch_size(per_device, world_size, accumulation),
        training_args.learning_rate,
    )
    return with_derived(layout, training_args.max_length or None)


def _launch_defaults(cuda: bool, explicit: set[str]) -> tuple[dict, list[str]]:
    """Defaults the launch derives (gloo and friends on a CPU, fused AdamW and the allocator on CUDA)."""
    defaults, notes = cpu_distributed_defaults(cuda)
    if cuda:
        defaults["optim"] = "adamw_torch_fused"  # one fused kernel per step on GPU; same math as adamw_torch
    if "save_steps" in explicit and "save_strategy" not in explicit:
        defaults["save_strategy"] = "steps"  # --save_steps N alone checkpoints, as in plain transformers
    return defaults, notes


def _parse_with_launch_precision(argv: list[str], recipe: dict, defaults: dict, cuda: bool):
    """Parse ``argv`` with the launch's precision (``reconcile.launch_precision``: the config's
    ``mixed_precision``, ``--mixed_precision``, or a DeepSpeed JSON that pins it) as the one source; the
    user's ``--bf16``/``--fp16`` may only agree. Returns the parsed arguments and the CPU fallback's warning."""
    launched, pinned_at = reconcile.launch_precision()  # before any CPU fallback: what the user launched
    argv_rest, user_precision = reconcile.split_precision_flags(argv, recipe)
    reconcile.reconcile_precision(user_precision, launched, pinned_at=pinned_at)
    if pinned_at and launched == "fp16" and not cuda:
        raise UserError(  # the launch's fp16 falls back to bf16 on a CPU; a JSON's pinned value cannot
            f"{pinned_at} is true, and no GPU is visible: on a CPU the script trains in bf16 (fp16 autocast "
            "has no CPU kernels worth using), which a DeepSpeed JSON that pins fp16 does not allow.\n"
            '  fix: on this machine set bf16.enabled to true and fp16.enabled to false (or both to "auto") there.'
        )
    warning = None if pinned_at else reconcile.cpu_mixed_precision_fallback(cuda)
    if launched is not None:
        # Built without the user's flags (they agree, see above): transformers' bf16 check is for GPUs only.
        argv = [*argv_rest, "--bf16", "false", "--fp16", "false"]
    script_args, training_args, model_args = parse_args(argv, defaults)
    if launched is not None:
        reconcile.apply_precision(training_args, launched if pinned_at else os.environ[reconcile.MP_ENV])
    return (script_args, training_args, model_args), warning


def _scaled(plan: BatchPlan, script_args) -> tuple[BatchPlan, str | None]:
    """The plan with ``--lr_scaling`` applied to its learning rate, and the note saying so."""
    if script_args.lr_scaling == "none":
        return plan, None
    if not script_args.base_global_batch_size:
        raise UserError(
            "--lr_scaling needs --base_global_batch_size (the global batch the learning rate was tuned for)."
        )
    base = script_args.base_global_batch_size
    lr = scale_learning_rate(plan.learning_rate, plan.global_batch_size, base, script_args.lr_scaling)
    note = (
        f"learning_rate {plan.learning_rate:g} -> {lr:g} ({script_args.lr_scaling} scaling, "
        f"global batch {plan.global_batch_size} vs base {base})"
    )
    return replace(plan, learning_rate=lr), note


def resolve(argv: list[str]) -> Settings:
    """Parse and reconcile every setting (see the module docstring); nothing is loaded yet."""
    cuda = torch.cuda.is_available()
    allocator = default_allocator() if cuda else None  # before the first CUDA allocation
    init_restarted_process_group()  # after a restart by torchrun's agent: see restarts.py
    recipe = read_recipe(argv)
    explicit = explicit_names(argv, recipe)
    defaults, notes = _launch_defaults(cuda, explicit)
    if allocator:
        notes.append(f"CUDA allocator: {allocator}")
    parsed, warning = _parse_with_launch_precision(argv, recipe, defaults, cuda)
    script_args, training_args, model_args = parsed
    if warning:
        notes.append(warning)
    promote_fsdp_on_cpu(cuda)
    evaluation_settings(script_args, training_args, explicit)
    if deepspeed_auto_sizes(training_args):
        notes.append(
            "DeepSpeed bucket sizes and ZeRO-3 persistence threshold derived from the model's hidden size"
        )
    if training_args.include_num_input_tokens_seen == "all":
        training_args.include_num_input_tokens_seen = "non_padding"
    notes += reconcile.reconcile_batch_settings(training_args, explicit)
    apply_collective_timeout(training_args.ddp_timeout)  # transformers leaves gloo at 30 min on CPU
    check_dataset_name(script_args.dataset_name)  # before the model loads: a wrong path fails in a second
    check_attention(model_args.attn_implementation, cuda)
    notes += prepare_run(script_args, training_args, explicit)  # the run folder: last of the checks
    plan, scaled = _scaled(batch_plan(training_args, world_size_from_env()), script_args)
    if scaled:
        training_args.learning_rate = plan.learning_rate
        notes.append(scaled)
    folder = RunFolder(training_args.output_dir)
    return Settings(script_args, training_args, model_args, plan, folder, notes, explicit)


def describe_checkpointing(training_args) -> str:
    """Whether and how often the run writes ``checkpoint-N`` folders, for the plan."""
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy)).lower()
    if strategy == "no":
        return "off (--save_steps N turns them on)"
    keep = (
        f", keep the last {training_args.save_total_limit}"
        if training_args.save_total_limit
        else ", keep all"
    )
    every = f"every {training_args.save_steps:g} steps" if strategy == "steps" else f"every {strategy}"
    return f"{every} and at the end{keep}"


def format_plan(info: dict, settings: Settings) -> str:
    """The plan printed before the first step: what the accelerator runs (``info``) and the batch plan."""
    args, plan = settings.training_args, settings.plan
    strategy = info["distributed_type"] + (
        f" ZeRO-{info['zero_stage']}" if info["zero_stage"] is not None else ""
    )
    rows = [
        ("strategy", f"{strategy} on {info['device']} ({info['mixed_precision']} precision)"),
        ("world size", info["world_size"]),
        ("micro batch per device", plan.per_device_train_batch_size),
        ("gradient accumulation", plan.gradient_accumulation_steps),
        (
            "global batch",
            f"{plan.global_batch_size} = {plan.per_device_train_batch_size} x {plan.num_processes} x "
            f"{plan.gradient_accumulation_steps}",
        ),
        ("tokens per step", f"<= {plan.tokens_per_step or 0} (global batch x max_length {args.max_length})"),
        ("learning rate", f"{plan.learning_rate:g}"),
        ("max steps", args.max_steps if args.max_steps > 0 else f"{args.num_train_epochs} epochs"),
        ("checkpoints", describe_checkpointing(args)),
    ]
    width = max(len(k) for k, _ in rows)
    return "disttune plan\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
