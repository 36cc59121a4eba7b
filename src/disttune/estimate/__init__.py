"""Memory per GPU for each distributed strategy, before you launch (no torch, no deepspeed imported).

``models``: architectures and exact parameter counts; ``presets``: published models by name; ``gpus``: cards
by name; ``memory``: the per-term byte formulas; ``strategies``: one estimate per strategy, against the GPU
and the host RAM; ``recommend``: the fastest one that fits.
"""

from __future__ import annotations

from disttune.estimate.gpus import GPUS_MIB, gpu_memory_gib
from disttune.estimate.memory import (
    STRATEGIES,
    TERM_SOURCES,
    activation_bytes,
    buffer_breakdown,
    fused_cross_entropy_bytes,
    logits_bytes,
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
    "ModelInfo",
    "ModelSpec",
    "Recommendation",
    "StrategyEstimate",
    "activation_bytes",
    "buffer_breakdown",
    "count_params",
    "estimate",
    "fused_cross_entropy_bytes",
    "gpu_memory_gib",
    "logits_bytes",
    "lora_params",
    "model_state_breakdown",
    "recommend",
    "resolve_model",
    "rule_of_thumb",
    "runtime_breakdown",
    "spec_from_config",
    "summarize",
]
