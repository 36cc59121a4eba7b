"""Resume anywhere: a checkpoint written by N processes under one strategy, continued by M under another.

A checkpoint resumed by the strategy and world size that wrote it loads natively (transformers' own
resume, exact). Any other combination goes through one portable form, made once from the original
checkpoint (which is left untouched) by reading it with the engine that wrote it, and loaded into the new
layout with the engine that runs it:

    source (read with)
      DeepSpeed ZeRO-1/2/3  deepspeed.checkpoint.ds_to_universal (DeepSpeed's universal checkpoint)
      FSDP2                 the full state dicts accelerate saves (fsdp_state_dict_type FULL_STATE_DICT),
                            or torch.distributed.checkpoint's dcp_to_torch_save (SHARDED_STATE_DICT)
      DDP / one process     model.safetensors and optimizer.pt (torch's AdamW state, by parameter order)
    target (written with)
      DeepSpeed ZeRO-1/2/3  deepspeed.utils.safe_set_full_fp32_param / safe_set_full_optimizer_state
      FSDP2                 torch.distributed.checkpoint.state_dict.set_model_state_dict /
                            set_optimizer_state_dict (full state dicts, resharded to this world size)
      DDP / one process     load_state_dict on the module, torch's optimizer state by parameter

The portable form, ``<output_dir>/portable/checkpoint-N/``: ``weights.safetensors`` (the fp32 master
weights by parameter name), ``optimizer.safetensors`` (Adam's ``exp_avg.<name>`` and
``exp_avg_sq.<name>``), ``portable.json`` (the optimizer step, what it was converted from) and copies of
the checkpoint's ``trainer_state.json`` (global step, hence the data position) and ``scheduler.pt``;
marked complete like a checkpoint, so an interrupted conversion is redone, a finished one reused.

Parameter names are the model's ``named_parameters()`` (a tied weight under its first name), the same
under every strategy: DeepSpeed and FSDP2 add no prefix to the module they shard.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import torch

from disttune.errors import UserError
from disttune.run_folder import RunFolder
from disttune.train.checkpoints import checkpoint_step, is_complete, read_marker, write_marker

MOMENTS = ("exp_avg", "exp_avg_sq")


def portable_path(checkpoint: str | Path) -> Path:
    """Where the portable form of ``checkpoint`` lives: ``<its folder>/portable/<its name>``."""
    return RunFolder.portable(checkpoint)


def prepare_resume(trainer, settings) -> str | None:
    """When the checkpoint comes from another strategy or world size: convert it once (main process; the
    others wait) and have the trainer load the portable copy. Returns the note for the log."""
    script_args, training_args = settings.script_args, settings.training_args
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None or not script_args.layout_change:
        return None
    if settings.model_args.use_peft:
        raise UserError(
            f"--resume_from_checkpoint {checkpoint}: {script_args.layout_change}: a LoRA run resumes only "
            "under the strategy and world size that wrote it.\n  fix: launch with the checkpoint's accelerate "
            "config and --num_processes."
        )
    model = trainer.model
    # Under ZeRO-3 a parameter is an empty placeholder from the start; its real shape is ds_shape.
    shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
    decay = set(trainer.get_decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    order = [n for n, _ in trainable if n in decay] + [n for n, _ in trainable if n not in decay]
    note = None
    with trainer.accelerator.main_process_first():
        if trainer.accelerator.is_main_process:
            _, note = make_portable(checkpoint, read_marker(checkpoint) or {}, shapes, order)
    trainer.portable = portable_path(checkpoint)
    return note


# --- reading a checkpoint, per source strategy ------------------------------------------------------------


def _read_deepspeed(checkpoint: Path) -> tuple[dict, dict, int | None]:
    """fp32 weights, Adam moments and step from a DeepSpeed ZeRO-1/2/3 checkpoint, via its universal form."""
    from deepspeed.checkpoint import ds_to_universal

    tags = sorted(checkpoint.glob("global_step*"), key=lambda p: p.stat().st_mtime)
    if not tags:
        raise UserError(f"{checkpoint}: no global_step* folder: not a DeepSpeed checkpoint.")
    with tempfile.TemporaryDirectory(dir=checkpoint.parent) as tmp:
        args = _universal_args(tags[-1], Path(tmp) / "universal")
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ds_to_universal.main(args)
        except Exception as exc:  # DeepSpeed's converter: report where, keep its log
            raise UserError(
                f"{tags[-1]}: DeepSpeed's universal-checkpoint conversion failed ({type(exc).__name__}: "
                f"{exc}).\n  its output ended with:\n{log.getvalue()[-1500:]}"
            ) from exc
        weights, moments, steps = {}, {}, set()
        for folder in sorted((Path(tmp) / "universal" / "zero").iterdir()):
            if not folder.is_dir():
                continue
            name = folder.name
            weights[name] = _universal_tensor(folder / "fp32.pt")
            for key in MOMENTS:
                if (folder / f"{key}.pt").is_file():
                    moments[f"{key}.{name}"] = _universal_tensor(folder / f"{key}.pt")
            if (folder / "step.pt").is_file():
                steps.add(int(torch.load(folder / "step.pt", map_location="cpu", weights_only=False)))
    return weights, moments, max(steps) if steps else None


def _universal_args(input_folder: Path, output_folder: Path):
    import argparse

    return argparse.Namespace(
        input_folder=str(input_folder),
        output_folder=str(output_folder),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # transformers' DeepSpeed checkpoints do not carry it
    )


def _universal_tensor(path: Path) -> torch.Tensor:
    # DeepSpeed writes these files with torch.save of a dict; they come from the checkpoint being resumed.
    value = torch.load(path, map_location="cpu", weights_only=False)
    return (value["param"] if isinstance(value, dict) else value).float().contiguous()


def _read_fsdp(checkpoint: Path) -> tuple[dict, dict, int | None]:
    """fp32 weights, Adam moments and step from an FSDP checkpoint written by accelerate."""
    model_file, optim_file = checkpoint / "pytorch_model_fsdp.bin", checkpoint / "optimizer.bin"
    if model_file.is_file() and optim_file.is_file():  # FULL_STATE_DICT
        weights = torch.load(model_file, map_location="cpu", weights_only=True)
        optim = torch.load(optim_file, map_location="cpu", weights_only=True)
    else:  # SHARDED_STATE_DICT: torch.distributed.checkpoint folders
        weights = _read_dcp(checkpoint / "pytorch_model_fsdp_0").get("model")
        optim = _read_dcp(checkpoint / "optimizer_0").get("optimizer")
        if weights is None or optim is None:
            raise UserError(
                f"{checkpoint}: no FSDP model and optimizer state found (pytorch_model_fsdp.bin + "
                "optimizer.bin, or pytorch_model_fsdp_0/ + optimizer_0/)."
            )
    moments, steps = _adam_state(optim["state"].items())
    return {k: v.float() for k, v in weights.items()}, moments, max(steps) if steps else None


def _read_dcp(folder: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if not folder.is_dir():
        return {}
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        dcp_to_torch_save(str(folder), str(Path(tmp) / "full.pt"))
        return torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)


def _read_ddp(checkpoint: Path, optimizer_order: list[str]) -> tuple[dict, dict, int | None]:
    """fp32 weights, Adam moments and step from a DDP (or one-process) checkpoint.

    torch numbers an optimizer's parameters in the order they were given to it; ``optimizer_order`` is
    that order (the trainer's parameter groups, which depend only on the model and the arguments).
    """
    from safetensors.torch import load_file

    weights_file, optim_file = checkpoint / "model.safetensors", checkpoint / "optimizer.pt"
    if not weights_file.is_file() or not optim_file.is_file():
        raise UserError(f"{checkpoint}: model.safetensors or optimizer.pt missing.")
    weights = load_file(weights_file)
    optim = torch.load(optim_file, map_location="cpu", weights_only=True)
    indices = [i for group in optim["param_groups"] for i in group["params"]]
    if len(indices) != len(optimizer_order):
        raise UserError(
            f"{optim_file}: the optimizer holds {len(indices)} parameters, this model trains "
            f"{len(optimizer_order)}: it was written for another model or other trainable parameters."
        )
    by_name = (
        (name, optim["state"].get(index, {})) for index, name in zip(indices, optimizer_order, strict=True)
    )
    moments, steps = _adam_state(by_name)
    return {k: v.float() for k, v in weights.items()}, moments, max(steps) if steps else None


def _adam_state(states) -> tuple[dict, set]:
    """``({"exp_avg.<name>": tensor, ...}, {steps})`` from ``(name, torch Adam state)`` pairs."""
    moments, steps = {}, set()
    for name, state in states:
        for key in MOMENTS:
            if key in state:
                moments[f"{key}.{name}"] = state[key].float()
        if "step" in state:
            steps.add(int(state["step"]))
    return moments, steps


def read_checkpoint(
    checkpoint: Path, strategy: str, optimizer_order: list[str]
) -> tuple[dict, dict, int | None]:
    """``(weights, moments, optimizer step)`` of ``checkpoint``, written under ``strategy`` (the
    ``strategies.checkpoint_layout`` name in its completion mark)."""
    if strategy.startswith("deepspeed"):
        return _read_deepspeed(checkpoint)
    if strategy.startswith("fsdp"):
        return _read_fsdp(checkpoint)
    return _read_ddp(checkpoint, optimizer_order)


# --- the portable form ---------------------------------------------------------------------------------------


def make_portable(
    checkpoint: str | Path, marker: dict, shapes: dict[str, tuple], optimizer_order: list[str]
) -> tuple[Path, str]:
    """Convert ``checkpoint`` once (main process only); returns its portable folder and a note saying what
    was converted (or that an earlier conversion was reused). ``shapes``: every parameter of the model being
    resumed, by name (DeepSpeed's ZeRO-3 conversion gives flat tensors: they are reshaped to these);
    ``optimizer_order``: its trainable ones in optimizer order."""
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    out = portable_path(checkpoint)
    source = f"{marker.get('strategy', '?')} x{marker.get('world_size', '?')}"
    if is_complete(out) and _portable_info(out).get("source_marked") == marker.get("time"):
        return out, f"using the portable copy of {checkpoint.name} made earlier ({out})"
    weights, moments, step = read_checkpoint(checkpoint, marker.get("strategy", "ddp"), optimizer_order)
    names = list(shapes)
    missing = [n for n in names if n not in weights]
    if missing:
        raise UserError(
            f"{checkpoint}: no weights for {len(missing)} parameter(s) of this model ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it was written for another model."
        )
    lacking = [n for n in optimizer_order if any(f"{k}.{n}" not in moments for k in MOMENTS)]
    if lacking:
        raise UserError(
            f"{checkpoint}: no Adam state for {len(lacking)} trainable parameter(s) ({', '.join(lacking[:3])}):"
            " only checkpoints of an Adam-style optimizer (exp_avg, exp_avg_sq) can change layout."
        )
    wrong = [n for n in names if weights[n].numel() != _numel(shapes[n])]
    if wrong:
        n = wrong[0]
        raise UserError(
            f"{checkpoint}: {n} has {weights[n].numel()} values, this model's has {_numel(shapes[n])} "
            f"({len(wrong)} such parameter(s)): it was written for another model."
        )
    weights = {n: weights[n].reshape(shapes[n]) for n in names}
    moments = {
        k: v.reshape(shapes[k.split(".", 1)[1]]) for k, v in moments.items() if k.split(".", 1)[1] in shapes
    }
    step = step if step is not None else checkpoint_step(checkpoint)
    if out.exists():
        shutil.rmtree(out)  # an interrupted conversion: redo it whole
    out.mkdir(parents=True)
    save_file({n: weights[n].contiguous() for n in names}, out / "weights.safetensors")
    kept = {f"{k}.{n}": moments[f"{k}.{n}"].contiguous() for n in optimizer_order for k in MOMENTS}
    save_file(kept, out / "optimizer.safetensors")
    for name in ("trainer_state.json", "scheduler.pt"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    info = {
        "step": step,
        "source": str(checkpoint),
        "source_layout": source,
        "source_marked": marker.get("time"),  # a checkpoint rewritten since is converted again
        "parameters": len(names),
    }
    (out / "portable.json").write_text(json.dumps(info, indent=2) + "\n")
    write_marker(out, {"portable_of": str(checkpoint)})
    note = (
        f"converted {checkpoint.name} ({source}) once into a portable checkpoint: fp32 weights of "
        f"{len(names)} parameters, Adam's exp_avg and exp_avg_sq for {len(optimizer_order)}, optimizer "
        f"step {step}, scheduler and trainer state -> {out} (the original is untouched)"
    )
    return out, note


def _portable_info(folder: Path) -> dict:
    try:
        return json.loads((folder / "portable.json").read_text())
    except (OSError, ValueError):
        return {}


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def read_portable(folder: Path) -> tuple[dict, dict, int]:
    """``(weights, moments, optimizer step)`` of a portable folder."""
    from safetensors.torch import load_file

    info = _portable_info(folder)
    return (
        load_file(folder / "weights.safetensors"),
        load_file(folder / "optimizer.safetensors"),
        info["step"],
    )


# --- loading it into the running job, per target strategy ---------------------------------------------------


def load_portable(trainer, folder: Path) -> None:
    """Put the portable weights, optimizer state and scheduler into ``trainer`` (after ``accelerator.prepare``).

    Every rank calls it and reads the files itself; each engine keeps only its own shard.
    """
    weights, moments, step = read_portable(folder)
    if trainer.is_deepspeed_enabled:
        _load_deepspeed(trainer.model_wrapped, weights, moments, step)
    elif trainer.is_fsdp_enabled:
        _load_fsdp(trainer.model_wrapped, trainer.optimizer, weights, moments, step)
    else:
        _load_module(trainer, weights, moments, step)
    scheduler = folder / "scheduler.pt"
    if scheduler.is_file() and hasattr(trainer.lr_scheduler, "load_state_dict"):
        trainer.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))
        # A native resume loads the optimizer's param groups too, and with them the current learning rate;
        # here the groups are the new optimizer's, still at the schedule's first value: set them.
        inner = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
        optimizer = getattr(inner, "optimizer", None)
        if optimizer is not None and hasattr(inner, "get_last_lr"):
            for group, lr in zip(optimizer.param_groups, inner.get_last_lr(), strict=True):
                group["lr"] = lr


def _ensure_adam_state(zero_optimizer) -> None:
    """Create Adam's state for every flat fp32 partition that has none yet, as the optimizer's own first step
    would (torch's Adam/AdamW: a float32 step tensor, on the device when fused or capturable; DeepSpeed's
    CPU Adam: an int), so that DeepSpeed's setters find it. ZeRO-1/2 and ZeRO-3 create it only at the first
    step; ZeRO-1/2 then link each parameter to its fragment of it (``_lazy_init_hp_params_optimizer_state``,
    which their step calls the same way)."""
    base = zero_optimizer.optimizer
    flat = getattr(zero_optimizer, "single_partition_of_fp32_groups", None)
    if flat is None:
        flat = getattr(zero_optimizer, "fp32_partitioned_groups_flat", [])
    cpu_adam = type(base).__name__ == "DeepSpeedCPUAdam"
    on_device = bool(base.defaults.get("fused") or base.defaults.get("capturable"))
    for param in flat:
        state = base.state[param]
        if state:
            continue
        if cpu_adam:
            state["step"] = 0
        else:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    if hasattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state"):
        zero_optimizer._lazy_init_hp_params_optimizer_state()


def _set_step(state: dict, step: int) -> None:
    old = state.get("step")
    state["step"] = torch.full_like(old, step) if torch.is_tensor(old) else step


def _load_module(trainer, weights: dict, moments: dict, step: int) -> None:
    """DDP or one process: the module's parameters, then torch's optimizer state per parameter."""
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(param.dtype))
    by_id = {id(p): n for n, p in params.items()}
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    for group in optimizer.param_groups:
        # torch's fused and capturable Adam keep the step count on the parameter's device (the fused
        # kernel refuses a CPU one: the default on CUDA is adamw_torch_fused); the others on the CPU.
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            name = by_id[id(param)]
            state = optimizer.state[param]
            for key in MOMENTS:
                state[key] = moments[f"{key}.{name}"].to(param.device, param.dtype).clone()
            state["step"] = torch.tensor(
                float(step), dtype=torch.float32, device=param.device if on_device else "cpu"
            )


def _load_fsdp(model, optimizer, weights: dict, moments: dict, step: int) -> None:
    """FSDP2: full state dicts in, each rank keeps its shard (torch.distributed.checkpoint.state_dict)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    optimizer = getattr(optimizer, "optimizer", optimizer)
    # strict=False: a tied weight's second name is in the model's state dict, not in the portable weights
    # (kept under its first name). Anything else missing would be a real gap: refuse it.
    result = set_model_state_dict(
        model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    gaps = [k for k in result.missing_keys if k in dict(model.named_parameters())] + list(
        result.unexpected_keys
    )
    if gaps:
        raise UserError(f"the portable weights do not fit this FSDP model: {', '.join(gaps[:3])}")
    groups = get_optimizer_state_dict(model, optimizer, options=options)["param_groups"]
    state = {
        name: {"step": torch.tensor(float(step)), **{k: moments[f"{k}.{name}"] for k in MOMENTS}}
        for group in groups
        for name in group["params"]
    }
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)


def _load_deepspeed(engine, weights: dict, moments: dict, step: int) -> None:
    """ZeRO-1/2/3: DeepSpeed's own setters for the fp32 master partitions and the Adam moments; the
    16-bit/working copy of each parameter is set too (whole under ZeRO-1/2, gathered under ZeRO-3)."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    params = dict(engine.module.named_parameters())
    zero3 = engine.zero_optimization_stage() == 3
    gather = (
        deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0)
        if zero3
        else contextlib.nullcontext()
    )
    with torch.no_grad(), gather:
        for name, param in params.items():
            if not zero3 or engine.global_rank == 0:
                param.data.copy_(weights[name].to(param.dtype))
    _ensure_adam_state(engine.optimizer)
    base = engine.optimizer.optimizer
    for name, param in params.items():
        if not param.requires_grad:
            continue
        safe_set_full_fp32_param(param, weights[name])
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, moments[f"{key}.{name}"], key)
    for state in base.state.values():
        _set_step(state, step)
    engine.global_steps = step
