"""Per-strategy memory estimates: model states + buffers + activations + runtime against the GPU and host RAM."""

from __future__ import annotations

import math
from dataclasses import dataclass

from disttune.errors import UserError
from disttune.estimate import activations as act
from disttune.estimate import allocator, memory
from disttune.estimate.models import ModelSpec, count_params, lora_params, moe_block_params
from disttune.strategies import resolve

GIB = memory.GIB
# Kept free on the GPU and in host RAM for what the estimate does not model: allocator fragmentation
# beyond the terms it names, short-lived spikes, other processes. The CUDA context, NCCL's buffers and the
# cross-entropy's peak are modelled terms now (docs/memory.md), not part of this margin.
HEADROOM = 0.10
MODEL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelInfo:
    """What is known about the model: a full spec, or just a parameter count (and maybe a few shapes)."""

    name: str
    num_params: int
    spec: ModelSpec | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None


@dataclass(frozen=True)
class Inputs:
    """The training setup being estimated (flag names as in accelerate/transformers/TRL)."""

    num_processes: int = 8
    num_machines: int = 1
    mixed_precision: str = "bf16"
    optimizer: str = "adamw"
    per_device_train_batch_size: int = 1
    max_length: int = 2048
    gradient_checkpointing: bool = False  # full: each layer's input kept, the layer recomputed
    lora_r: int | None = None
    gpu_memory_gb: float = 80.0  # GiB (2**30 bytes) per GPU
    selective_checkpointing: bool = False  # torchtitan's op-level policy
    host_memory_gb: float | None = None  # GiB of RAM per node; None: not checked
    gpu_name: str | None = None  # the card --gpu named, for the report
    loss: str = "chunked"  # TRL's chunked log-probs (the script), transformers' full logits, or liger's fused
    use_liger_kernel: bool = False  # Liger's RMSNorm, SwiGLU and RoPE kernels (TRL --use_liger_kernel)
    attn_implementation: str = "sdpa"  # sdpa, flash_attention_2 or eager (transformers' names)
    packing: bool = False  # TRL --packing: rows of several sequences, flattened (padding-free)
    allocator: str = "expandable"  # the CUDA allocator's segments: expandable (the script's default) or fixed
    model_dtype: str = "float32"  # what the weights are loaded as (the script's --dtype, float32 by default)
    tokens_vary: bool = True  # tokens per micro batch change between steps (False: padded to max_length)


@dataclass(frozen=True)
class StrategyEstimate:
    """Per-rank bytes for one strategy; ``terms``/``buffers``/``activations``/``reserve``/``runtime`` name
    where each byte goes, ``phases`` the allocated bytes at each moment of the step."""

    name: str
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    model_state_bytes: int
    activation_bytes: int | None  # at the start of backward, loss and autocast copies included; None: unknown
    buffer_bytes: int  # the buffers alive in the peak phase
    runtime_bytes: int  # CUDA context + NCCL: outside torch's allocator
    allocated_bytes: int  # peak of live tensors: torch.cuda.max_memory_allocated
    reserved_bytes: int  # allocated + the allocator's cached blocks: torch.cuda.max_memory_reserved
    total_bytes: int  # reserved + runtime: what the GPU must hold (nvidia-smi); decides ``fits``
    peak_phase: str  # the phase of the allocated peak (``phases``)
    cpu_bytes_per_node: int | None  # host RAM for the offloaded states of all ranks on a node
    gpu_fits: bool  # total_bytes <= (1 - HEADROOM) x gpu_memory_gb GiB
    host_fits: bool | None  # cpu_bytes_per_node <= (1 - HEADROOM) x host_memory_gb GiB; None: not checked
    fits: bool  # gpu_fits and host_fits is not False
    why: str  # what does not fit, in one sentence ("" when it fits)
    terms: dict
    buffers: dict
    runtime: dict
    reserve: dict  # reserved - allocated, by allocator term (allocator.py)
    activations: dict  # activation terms (activations.py), bytes at the start of backward
    phases: dict  # allocated bytes per phase
    allocator: str = "expandable"


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def validate(inputs: Inputs) -> None:
    """All problems with the inputs in one ``UserError``."""
    problems = []
    for name in ("num_processes", "num_machines", "per_device_train_batch_size", "max_length"):
        value = getattr(inputs, name)
        if not isinstance(value, int) or value < 1:
            problems.append(f"--{name} must be a positive whole number, got {value}")
    if inputs.lora_r is not None and inputs.lora_r < 1:
        problems.append(f"--lora_r must be a positive whole number, got {inputs.lora_r}")
    if not _positive(inputs.gpu_memory_gb):
        problems.append(
            f"--gpu_memory_gb must be a positive finite number of GiB, got {inputs.gpu_memory_gb}"
        )
    if inputs.host_memory_gb is not None and not _positive(inputs.host_memory_gb):
        problems.append(
            f"--host_memory_gb must be a positive finite number of GiB, got {inputs.host_memory_gb}"
        )
    if inputs.gradient_checkpointing and inputs.selective_checkpointing:
        problems.append(
            "--gradient_checkpointing (full) and --selective_checkpointing exclude each other; pick one"
        )
    if inputs.mixed_precision not in memory.MIXED_PRECISION:
        problems.append(f"--mixed_precision must be one of {', '.join(memory.MIXED_PRECISION)}")
    if inputs.optimizer not in memory.OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(memory.OPTIMIZERS)}")
    for flag, value, choices in (
        ("loss", inputs.loss, act.LOSSES),
        ("attn_implementation", inputs.attn_implementation, act.ATTENTION),
        ("allocator", inputs.allocator, allocator.ALLOCATORS),
        ("dtype", inputs.model_dtype, MODEL_DTYPES),
    ):
        if value not in choices:
            problems.append(f"--{flag} must be one of {', '.join(choices)}, got {value!r}")
    if not problems and inputs.num_processes % inputs.num_machines:
        problems.append(
            f"--num_processes {inputs.num_processes} is not divisible by --num_machines "
            f"{inputs.num_machines}; give the total process count over all machines"
        )
    if problems:
        raise UserError("; ".join(problems) + ".")


def trainable_params(model: ModelInfo, inputs: Inputs) -> int:
    """All parameters, or the LoRA adapters' when ``lora_r`` is set."""
    if inputs.lora_r is None:
        return model.num_params
    if model.spec is None:
        raise UserError(
            "--lora_r needs the matrix shapes: use --model (a preset or a config.json), not --num_params."
        )
    return lora_params(model.spec, inputs.lora_r)


def _spec(model: ModelInfo) -> ModelSpec | None:
    """The model's spec; with --num_params and shapes, a generic decoder (MHA, 4h MLP, vocabulary unknown)."""
    if model.spec is not None or not (model.hidden_size and model.num_hidden_layers):
        return model.spec
    h = model.hidden_size
    heads = max(1, h // 128)
    return ModelSpec(
        model.name, "llama", 0, h, 4 * h, model.num_hidden_layers, heads, heads, h // heads, True
    )


def layout(name: str, model: ModelInfo, inputs: Inputs) -> act.Layout:
    """How strategy ``name`` lays out and computes one micro batch (activations.py)."""
    b, s = inputs.per_device_train_batch_size, inputs.max_length
    return act.Layout(
        act.precision_mode(name, inputs.mixed_precision, inputs.model_dtype),
        1 if inputs.packing else b,  # TRL's padding-free collator flattens packed rows into one
        b * s if inputs.packing else s,
        attention=inputs.attn_implementation,
        lora_r=inputs.lora_r,
        liger=inputs.use_liger_kernel,
        loss=inputs.loss if model.spec is not None else "chunked",
        packed=inputs.packing,
    )


def activations(name: str, model: ModelInfo, inputs: Inputs) -> act.Activations | None:
    """The micro batch's activations under strategy ``name``, or None when the shapes are unknown."""
    spec = _spec(model)
    if spec is None:
        return None
    ckpt = (
        "full" if inputs.gradient_checkpointing else "selective" if inputs.selective_checkpointing else "none"
    )
    lay = layout(name, model, inputs)
    weight = 2 if lay.mode == "16-bit" and name != "fsdp2" else 4  # the lm_head's dtype
    return act.estimate_activations(spec, lay, ckpt, weight)


PERSISTENT_BUFFERS = ("ddp_reducer_buckets", "ipg_bucket", "offload_grad_staging")  # allocated once, kept


def _states_and_buffers(name: str, model: ModelInfo, inputs: Inputs) -> tuple[dict, dict]:
    """Model-state terms and implementation buffers of strategy ``name`` (memory.py)."""
    n, mp = inputs.num_processes, inputs.mixed_precision
    trainable = trainable_params(model, inputs)
    total_params = model.num_params + (trainable if inputs.lora_r is not None else 0)
    spec = model.spec
    # accelerate fills DeepSpeed's bucket sizes and ZeRO-3 persistence threshold from hidden_size
    auto = memory.hf_auto_buckets(spec.hidden_size) if spec is not None else None
    counts = count_params(spec, auto["stage3_param_persistence_threshold"]) if spec is not None else None
    persistent = counts.small_tensors if counts is not None else 0
    terms = memory.model_state_breakdown(
        name, total_params, n, mp, inputs.optimizer, trainable, persistent, inputs.model_dtype
    )
    largest_lora = (
        inputs.lora_r * max(spec.hidden_size, spec.q_dim, spec.intermediate_size)
        if spec is not None and inputs.lora_r is not None
        else None
    )
    buffers = memory.buffer_breakdown(
        name,
        total_params,
        n,
        mp,
        trainable,
        largest_tensor=counts.largest_tensor if counts else None,
        layer_params=counts.per_layer if counts else None,
        root_params=(counts.embedding + counts.lm_head + spec.hidden_size) if counts else None,
        deepspeed=auto,
        largest_trainable=largest_lora,
        largest_gathered=moe_block_params(spec) if spec is not None else None,
    )
    return terms, buffers


def _phases(terms: dict, buffers: dict, a: act.Activations | None, checkpointing: bool) -> dict[str, int]:
    """Allocated bytes at each moment of a step that can hold the peak (docs/memory.md, *Phases*).

    backward start: every activation saved, the loss's backward transient, autocast's weight copies, no
    ``PROGRESSIVE_GRADS`` yet; backward end: all gradients, one layer's tensors left; optimizer step: the step's
    buffers; forward end (with checkpointing): every weight copy still cached, the checkpoints.
    """
    sums = memory.summarize(terms)
    grads = sum(v for k, v in terms.items() if k in memory.PROGRESSIVE_GRADS)
    base = sums["params"] + sums["grads"] + sums["optimizer"] - grads
    base += sum(v for k, v in buffers.items() if k in PERSISTENT_BUFFERS)
    step = sum(v for k, v in buffers.items() if k in memory.STEP_BUFFERS)
    during = sum(
        v for k, v in buffers.items() if k not in PERSISTENT_BUFFERS and k not in memory.STEP_BUFFERS
    )
    out = {
        "backward start": base + during + (a.saved + a.peak + a.weight_copies if a else 0),
        "backward end": base + grads + during + (a.last_layer if a else 0),
        "optimizer step": base + grads + step,
    }
    if a is not None and checkpointing:
        out["forward end"] = base + during + a.forward_saved + a.forward_copies
    return out


def _reserve(name: str, inputs: Inputs, terms: dict, buffers: dict, a, phases: dict) -> dict[str, int]:
    """The allocator's cached blocks beyond the live tensors (allocator.py) for this strategy and phases."""
    grads = sum(v for k, v in terms.items() if k in memory.PROGRESSIVE_GRADS)
    idle = {}
    if name == "fsdp2":  # sharded grads and a layer's reduce-scatter buffer live in the reduce-scatter stream
        rs = buffers.get("unsharded_grads", 0)
        idle = {p: rs + (grads if p in ("backward start", "forward end") else 0) for p in phases}
    if inputs.allocator != "fixed":
        return allocator.reserve("expandable", phases, idle)
    step_buffers = {k: v for k, v in buffers.items() if k in memory.STEP_BUFFERS}
    step = sum(step_buffers.values())
    during = sum(v for k, v in buffers.items() if k not in PERSISTENT_BUFFERS and k not in step_buffers)
    backward = during + ((a.saved + a.peak + a.weight_copies) if a else 0)
    w = 2 if inputs.mixed_precision in ("fp16", "bf16") else 4
    # the step's largest single request: ZeRO-1/2's fp32 partition; ZeRO-3's fp32 copy of a sub group
    sub_group = step_buffers.get("fp32_grad_subgroup", 0) * 4 // (w + 4 if w != 4 else 4)
    largest_step = max(step_buffers.get("fp32_grad_partition_at_step", 0), sub_group)
    loss = [v for k, v in a.terms.items() if k.startswith("loss.")] if a else []
    largest_block = max([b for b, _ in a.blocks] + loss, default=0) if a else 0
    segments = min(step, backward) if largest_step > largest_block else 0
    stranded = allocator.stranded_bytes(a.blocks) if a and inputs.tokens_vary else 0
    logits = 0
    if a and inputs.loss == "full" and w == 2:
        logits = a.terms.get("loss.logits", 0) // 12 * 2  # the 16-bit logits: 2 of the 12 bytes per token
    return allocator.reserve("fixed", phases, idle, segments, stranded, logits)


def estimate_strategy(name: str, model: ModelInfo, inputs: Inputs) -> StrategyEstimate:
    """Memory of one strategy for ``model`` trained as ``inputs`` describes."""
    n = inputs.num_processes
    terms, buffers = _states_and_buffers(name, model, inputs)
    sums = memory.summarize(terms)
    a = activations(name, model, inputs)
    phases = _phases(terms, buffers, a, inputs.gradient_checkpointing)
    peak_phase = max(phases, key=phases.get)
    allocated = phases[peak_phase]
    reserve = _reserve(name, inputs, terms, buffers, a, phases)
    runtime = memory.runtime_breakdown(n)
    reserved = allocated + sum(reserve.values())
    total = reserved + sum(runtime.values())
    cpu = sums["cpu"] * (n // inputs.num_machines) if sums["cpu"] else None
    gpu_fits, host_fits, why = _fits(inputs, total, cpu)
    in_phase = {
        "backward start": lambda k: k not in memory.STEP_BUFFERS,
        "backward end": lambda k: k not in memory.STEP_BUFFERS,
        "forward end": lambda k: k not in memory.STEP_BUFFERS,
        "optimizer step": lambda k: k in memory.STEP_BUFFERS or k in PERSISTENT_BUFFERS,
    }[peak_phase]
    state = sums["params"] + sums["grads"] + sums["optimizer"]
    return StrategyEstimate(
        name,
        sums["params"],
        sums["grads"],
        sums["optimizer"],
        state,
        (a.saved + a.peak + a.weight_copies) if a else None,
        sum(v for k, v in buffers.items() if in_phase(k)),
        sum(runtime.values()),
        allocated,
        reserved,
        total,
        peak_phase,
        cpu,
        gpu_fits,
        host_fits,
        gpu_fits and host_fits is not False,
        why,
        terms,
        buffers,
        runtime,
        reserve,
        a.terms if a else {},
        phases,
        inputs.allocator,
    )


def _fits(inputs: Inputs, total: int, cpu: int | None) -> tuple[bool, bool | None, str]:
    """GPU: reserved + runtime against the card less ``HEADROOM``; host RAM per node under offload."""
    n = inputs.num_processes
    gpu_usable = (1 - HEADROOM) * inputs.gpu_memory_gb * GIB
    gpu_fits = total <= gpu_usable
    host_fits = None
    if cpu is not None and inputs.host_memory_gb is not None:
        host_fits = cpu <= (1 - HEADROOM) * inputs.host_memory_gb * GIB
    why = []
    if not gpu_fits:
        why.append(f"needs {total / GIB:.1f} GiB per GPU, {gpu_usable / GIB:.1f} usable")
    if host_fits is False:
        why.append(
            f"needs {cpu / GIB:.0f} GiB of host RAM per node for the offloaded states of its "
            f"{n // inputs.num_machines} ranks, {(1 - HEADROOM) * inputs.host_memory_gb:.0f} usable of "
            f"--host_memory_gb {inputs.host_memory_gb:g}"
        )
    return gpu_fits, host_fits, "; ".join(why)


def estimate(
    model: ModelInfo, inputs: Inputs, strategies: tuple[str, ...] = memory.STRATEGIES
) -> list[StrategyEstimate]:
    """``estimate_strategy`` for each of ``strategies`` (validated first; the rows of disttune/strategies.py)."""
    validate(inputs)
    return [estimate_strategy(s, model, inputs) for s in resolve(strategies)]  # old names (ALIASES) too
