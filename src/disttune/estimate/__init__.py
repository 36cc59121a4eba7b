"""Memory per GPU for each distributed strategy, before you launch (no torch, no deepspeed imported).

``models``: architectures and exact parameter counts; ``presets``: published models by name; ``gpus``: cards
by name; ``memory``: the model-state and buffer formulas; ``activations``: what autograd keeps, tensor by
tensor; ``allocator``: what the CUDA caching allocator reserves beyond it; ``strategies``: one estimate per
strategy, phase by phase, against the GPU and the host RAM; ``recommend``: the fastest one that fits.
"""

from __future__ import annotations

from disttune.estimate.activations import Layout, estimate_activations, layer_tensors
from disttune.estimate.allocator import stranded_bytes
from disttune.estimate.gpus import GPUS_MIB, gpu_memory_gib
from disttune.estimate.memory import (
    STRATEGIES,
    TERM_SOURCES,
    buffer_breakdown,
    model_state_breakdown,
    runtime_breakdown,
    summarize,
)
from disttune.estimate.models import (
    ModelSpec,
    count_params,
    lora_params,
    spec_from_config,
)
from disttune.estimate.presets import PRESETS, resolve_model
from disttune.estimate.recommend import SPEED_ORDER, Recommendation, recommend, rule_of_thumb
from disttune.estimate.strategies import HEADROOM, Inputs, ModelInfo, StrategyEstimate, estimate

__all__ = [
    "GPUS_MIB",
    "HEADROOM",
    "PRESETS",
    "SPEED_ORDER",
    "STRATEGIES",
    "TERM_SOURCES",
    "Inputs",
    "Layout",
    "ModelInfo",
    "ModelSpec",
    "Recommendation",
    "StrategyEstimate",
    "estimate_activations",
    "buffer_breakdown",
    "count_params",
    "estimate",
    "gpu_memory_gib",
    "layer_tensors",
    "lora_params",
    "model_state_breakdown",
    "recommend",
    "resolve_model",
    "rule_of_thumb",
    "runtime_breakdown",
    "spec_from_config",
    "stranded_bytes",
    "summarize",
]
