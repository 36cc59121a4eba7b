"""Per-strategy memory estimates: model states + buffers + activations against a GPU budget."""

from __future__ import annotations

from dataclasses import dataclass

from disttune.errors import UserError
from disttune.estimate import memory
from disttune.estimate.models import ModelSpec, count_params, lora_params

GIB = 1024**3
HEADROOM = 0.10  # keep 10% of the GPU free for the CUDA context, allocator fragmentation and spikes


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
    """The training setup being estimated (flag names as in accelerate/transformers)."""

    num_processes: int = 8
    num_machines: int = 1
    mixed_precision: str = "bf16"
    optimizer: str = "adamw"
    per_device_train_batch_size: int = 1
    max_length: int = 2048
    gradient_checkpointing: bool = False
    lora_r: int | None = None
    gpu_memory_gb: float = 80.0


@dataclass(frozen=True)
class StrategyEstimate:
    """Per-rank bytes for one strategy; ``terms``/``buffers`` name where each byte goes."""

    name: str
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    model_state_bytes: int
    activation_bytes: int | None  # None when the shapes are unknown
    buffer_bytes: int
    total_bytes: int  # model states + activations (when known) + buffers, on the GPU
    cpu_bytes_per_node: int | None  # host RAM for the offloaded states of all ranks on a node
    fits: bool  # total_bytes <= (1 - HEADROOM) x gpu_memory_gb GiB
    terms: dict
    buffers: dict


def validate(inputs: Inputs) -> None:
    """All problems with the inputs in one ``UserError``."""
    problems = []
    for name in ("num_processes", "num_machines", "per_device_train_batch_size", "max_length"):
        value = getattr(inputs, name)
        if not isinstance(value, int) or value < 1:
            problems.append(f"--{name} must be a positive whole number, got {value}")
    if inputs.lora_r is not None and inputs.lora_r < 1:
        problems.append(f"--lora_r must be a positive whole number, got {inputs.lora_r}")
    if not inputs.gpu_memory_gb > 0:
        problems.append(f"--gpu_memory_gb must be positive, got {inputs.gpu_memory_gb}")
    if inputs.mixed_precision not in memory.MIXED_PRECISION:
        problems.append(f"--mixed_precision must be one of {', '.join(memory.MIXED_PRECISION)}")
    if inputs.optimizer not in memory.OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(memory.OPTIMIZERS)}")
    if not problems and inputs.num_processes % inputs.num_machines:
        problems.append(f"--num_processes {inputs.num_processes} is not divisible by --num_machines "
                        f"{inputs.num_machines}; give the total process count over all machines")
    if problems:
        raise UserError("; ".join(problems) + ".")


def trainable_params(model: ModelInfo, inputs: Inputs) -> int:
    """All parameters, or the LoRA adapters' when ``lora_r`` is set."""
    if inputs.lora_r is None:
        return model.num_params
    if model.spec is None:
        raise UserError("--lora_r needs the matrix shapes: use --model (a preset or a config.json), "
                        "not --num_params.")
    return lora_params(model.spec, inputs.lora_r)


def activations(model: ModelInfo, inputs: Inputs) -> int | None:
    """Decoder activations + logits per rank, or None when the shapes are unknown."""
    b, s, mp = inputs.per_device_train_batch_size, inputs.max_length, inputs.mixed_precision
    spec = model.spec
    if spec is not None:
        return (memory.activation_bytes(b, s, spec.hidden_size, spec.num_hidden_layers, spec.intermediate_size,
                                        spec.q_dim, spec.kv_dim, mp, inputs.gradient_checkpointing)
                + memory.logits_bytes(b, s, spec.vocab_size, mp))
    if model.hidden_size and model.num_hidden_layers:  # generic MHA + 4h MLP decoder, logits unknown
        h = model.hidden_size
        return memory.activation_bytes(b, s, h, model.num_hidden_layers, 4 * h, h, h, mp,
                                       inputs.gradient_checkpointing)
    return None


def estimate_strategy(name: str, model: ModelInfo, inputs: Inputs) -> StrategyEstimate:
    """Memory of one strategy for ``model`` trained as ``inputs`` describes."""
    n, mp = inputs.num_processes, inputs.mixed_precision
    trainable = trainable_params(model, inputs)
    total_params = model.num_params + (trainable if inputs.lora_r is not None else 0)
    # accelerate fills DeepSpeed's bucket sizes and ZeRO-3 persistence threshold from hidden_size
    auto = memory.hf_auto_buckets(model.spec.hidden_size) if model.spec is not None else None
    counts = (count_params(model.spec, auto["stage3_param_persistence_threshold"])
              if model.spec is not None else None)
    persistent = counts.small_tensors if counts is not None else 0
    terms = memory.model_state_breakdown(name, total_params, n, mp, inputs.optimizer, trainable, persistent)
    sums = memory.summarize(terms)
    buffers = memory.buffer_breakdown(
        name, total_params, n, mp, trainable,
        largest_tensor=counts.largest_tensor if counts else None,
        layer_params=counts.per_layer if counts else None,
        root_params=(counts.embedding + counts.lm_head + model.spec.hidden_size) if counts else None,
        deepspeed=auto)
    act = activations(model, inputs)
    state = sums["params"] + sums["grads"] + sums["optimizer"]
    buf = sum(buffers.values())
    total = state + buf + (act or 0)
    cpu = sums["cpu"] * (n // inputs.num_machines) if "offload" in name else None
    fits = total <= (1 - HEADROOM) * inputs.gpu_memory_gb * GIB
    return StrategyEstimate(name, sums["params"], sums["grads"], sums["optimizer"], state, act, buf, total, cpu,
                            fits, terms, buffers)


def estimate(model: ModelInfo, inputs: Inputs,
             strategies: tuple[str, ...] = memory.STRATEGIES) -> list[StrategyEstimate]:
    """``estimate_strategy`` for each of ``strategies`` (validated first)."""
    validate(inputs)
    unknown = [s for s in strategies if s not in memory.STRATEGIES]
    if unknown:
        raise UserError(f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(memory.STRATEGIES)}.")
    return [estimate_strategy(s, model, inputs) for s in strategies]
