"""Per-strategy memory estimates: model states + buffers + activations + runtime against the GPU and host RAM."""

from __future__ import annotations

import math
from dataclasses import dataclass

from disttune.errors import UserError
from disttune.estimate import memory
from disttune.estimate.models import ModelSpec, count_params, lora_params, moe_block_params
from disttune.strategies import resolve

GIB = memory.GIB
# Kept free on the GPU and in host RAM for what the estimate does not model: allocator fragmentation
# beyond the terms it names, short-lived spikes, other processes. The CUDA context, NCCL's buffers and the
# cross-entropy's peak are modelled terms now (docs/memory.md), not part of this margin.
HEADROOM = 0.10


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
    fused_cross_entropy: bool = False  # liger's fused linear cross-entropy: no whole logits
    host_memory_gb: float | None = None  # GiB of RAM per node; None: not checked
    gpu_name: str | None = None  # the card --gpu named, for the report


@dataclass(frozen=True)
class StrategyEstimate:
    """Per-rank bytes for one strategy; ``terms``/``buffers``/``runtime`` name where each byte goes."""

    name: str
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    model_state_bytes: int
    activation_bytes: int | None  # decoder + cross-entropy; None when the shapes are unknown
    buffer_bytes: int  # the buffers alive in the peak phase
    runtime_bytes: int  # CUDA context + NCCL: outside torch's allocator
    total_bytes: int  # the GPU peak: model states + runtime + the larger of the two phases; decides ``fits``
    reserved_bytes: int  # torch.cuda.max_memory_reserved when memory is plentiful: total - runtime + reserve
    peak_phase: str  # "backward" (activations + backward buffers) or "optimizer step" (step buffers)
    cpu_bytes_per_node: int | None  # host RAM for the offloaded states of all ranks on a node
    gpu_fits: bool  # total_bytes <= (1 - HEADROOM) x gpu_memory_gb GiB
    host_fits: bool | None  # cpu_bytes_per_node <= (1 - HEADROOM) x host_memory_gb GiB; None: not checked
    fits: bool  # gpu_fits and host_fits is not False
    why: str  # what does not fit, in one sentence ("" when it fits)
    terms: dict
    buffers: dict
    runtime: dict
    reserve: dict  # cached blocks that cannot serve a later request (released before an out-of-memory)


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


def activations(model: ModelInfo, inputs: Inputs) -> int | None:
    """Decoder activations + the cross-entropy's peak per rank, or None when the shapes are unknown."""
    b, s, mp = inputs.per_device_train_batch_size, inputs.max_length, inputs.mixed_precision
    ckpt = dict(
        gradient_checkpointing=inputs.gradient_checkpointing,
        selective_checkpointing=inputs.selective_checkpointing,
    )
    spec = model.spec
    if spec is not None:
        decoder = memory.activation_bytes(
            b,
            s,
            spec.hidden_size,
            spec.num_hidden_layers,
            spec.mlp_width_per_token,
            spec.q_dim,
            spec.kv_dim,
            mp,
            norms_per_layer=spec.norms_per_layer,
            mlp_gated=spec.mlp_gated,
            **ckpt,
        )
        if inputs.fused_cross_entropy:
            return decoder + memory.fused_cross_entropy_bytes(
                b, s, spec.vocab_size, spec.hidden_size, mp, lm_head_trainable=inputs.lora_r is None
            )
        return decoder + memory.logits_bytes(b, s, spec.vocab_size, mp)
    if model.hidden_size and model.num_hidden_layers:  # generic MHA + 4h MLP decoder, logits unknown
        h = model.hidden_size
        return memory.activation_bytes(b, s, h, model.num_hidden_layers, 4 * h, h, h, mp, **ckpt)
    return None


PERSISTENT_BUFFERS = ("ddp_reducer_buckets", "ipg_bucket", "offload_grad_staging")  # allocated once, kept


def estimate_strategy(name: str, model: ModelInfo, inputs: Inputs) -> StrategyEstimate:
    """Memory of one strategy for ``model`` trained as ``inputs`` describes."""
    n, mp = inputs.num_processes, inputs.mixed_precision
    trainable = trainable_params(model, inputs)
    total_params = model.num_params + (trainable if inputs.lora_r is not None else 0)
    spec = model.spec
    # accelerate fills DeepSpeed's bucket sizes and ZeRO-3 persistence threshold from hidden_size
    auto = memory.hf_auto_buckets(spec.hidden_size) if spec is not None else None
    counts = count_params(spec, auto["stage3_param_persistence_threshold"]) if spec is not None else None
    persistent = counts.small_tensors if counts is not None else 0
    terms = memory.model_state_breakdown(name, total_params, n, mp, inputs.optimizer, trainable, persistent)
    sums = memory.summarize(terms)
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
    runtime = memory.runtime_breakdown(n)
    act = activations(model, inputs)
    state = sums["params"] + sums["grads"] + sums["optimizer"]
    kept = sum(v for k, v in buffers.items() if k in PERSISTENT_BUFFERS)
    step_only = sum(v for k, v in buffers.items() if k in memory.STEP_BUFFERS)
    backward_only = (act or 0) + sum(buffers.values()) - kept - step_only
    phase = "backward" if backward_only >= step_only else "optimizer step"
    total = state + sum(runtime.values()) + kept + max(backward_only, step_only)
    reserve = allocator_reserve(model, inputs, step_only, min(backward_only, step_only))
    cpu = sums["cpu"] * (n // inputs.num_machines) if sums["cpu"] else None
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
    return StrategyEstimate(
        name,
        sums["params"],
        sums["grads"],
        sums["optimizer"],
        state,
        act,
        kept + (backward_only - (act or 0) if phase == "backward" else step_only),
        sum(runtime.values()),
        total,
        total - sum(runtime.values()) + sum(reserve.values()),
        phase,
        cpu,
        gpu_fits,
        host_fits,
        gpu_fits and host_fits is not False,
        "; ".join(why),
        terms,
        buffers,
        runtime,
        reserve,
    )


def allocator_reserve(
    model: ModelInfo, inputs: Inputs, step_bytes: int, smaller_phase: int
) -> dict[str, int]:
    """Bytes torch's caching allocator keeps cached at the peak beyond the live tensors.

    A request is served from one cached block or a new segment, never from two blocks, and cached segments
    are returned to the driver only when a cudaMalloc fails. So a freed block smaller than every later
    request stays reserved: the 16-bit logits (w b s V) once the loss has upcast them; and when the step's
    flat fp32 gradient is larger than the biggest block backward freed (the 4 b s V log-probabilities), the
    two phases take separate segments, so the smaller phase's bytes stay reserved beside the larger one.
    Under memory pressure both are released before an out-of-memory error, so ``fits`` ignores them.
    """
    spec, b, s = model.spec, inputs.per_device_train_batch_size, inputs.max_length
    if spec is None:
        return {}
    out = {}
    w = 2 if inputs.mixed_precision in ("fp16", "bf16") else 4
    if w == 2 and not inputs.fused_cross_entropy:
        out["logits_forward_block"] = w * b * s * spec.vocab_size
    largest_backward_block = 0 if inputs.fused_cross_entropy else 4 * b * s * spec.vocab_size
    if step_bytes * 4 // (w + 4 if w != 4 else 4) > largest_backward_block and smaller_phase:
        out["phase_segments"] = smaller_phase
    return out


def estimate(
    model: ModelInfo, inputs: Inputs, strategies: tuple[str, ...] = memory.STRATEGIES
) -> list[StrategyEstimate]:
    """``estimate_strategy`` for each of ``strategies`` (validated first; the rows of disttune/strategies.py)."""
    validate(inputs)
    return [estimate_strategy(s, model, inputs) for s in resolve(strategies)]  # old names (ALIASES) too
