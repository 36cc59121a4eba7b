"""Keys that were renamed: their successor, the release that renamed them, and whether the old name still works.

Keyed by the dotted path inside its file (``fsdp_config`` keys with their ``fsdp_`` prefix). A key that the
targeted versions (accelerate 1.15, DeepSpeed 0.19.8) no longer read is an error (the setting is silently
lost); one they still read and translate is a warning (it runs as written, but the next release may drop it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Renamed:
    """A renamed key.

    Attributes:
        new: the successor, as it is written in the same section.
        since: the release that renamed it (and where the change is recorded).
        read: whether the targeted release still reads the old name.
    """

    new: str
    since: str
    read: bool


# accelerate config (YAML, or JSON as accelerate also accepts)
ACCELERATE = {
    # huggingface/accelerate PR #2288 (issue #2275), released in 0.26.0; the old name was read with a
    # deprecation warning for a while, and accelerate 1.15 no longer reads it.
    "fsdp_config.fsdp_backward_prefetch_policy": Renamed(
        "fsdp_backward_prefetch", "accelerate 0.26.0", read=False
    ),
}

# DeepSpeed JSON
DEEPSPEED = {
    # deepspeedai/DeepSpeed PR #1453 (bf16 for ZeRO-3), DeepSpeed 0.6.0; 0.19.8 still maps the old name
    # (DeepSpeedZeroConfig field with deprecated=True, new_param=gather_16bit_weights_on_model_save).
    "zero_optimization.stage3_gather_fp16_weights_on_model_save": Renamed(
        "stage3_gather_16bit_weights_on_model_save", "DeepSpeed 0.6.0", read=True
    ),
    # Deprecated fields of DeepSpeedZeroConfig in 0.19.8: mapped to their successor, except
    # cpu_offload_use_pin_memory (set_new_param=False: its value is dropped).
    "zero_optimization.cpu_offload": Renamed(
        'offload_optimizer: {"device": "cpu"}', "DeepSpeed 0.3.15 (ZeRO-Infinity)", read=True
    ),
    "zero_optimization.cpu_offload_param": Renamed(
        'offload_param: {"device": "cpu"}', "DeepSpeed 0.3.15 (ZeRO-Infinity)", read=True
    ),
    "zero_optimization.cpu_offload_use_pin_memory": Renamed(
        "offload_param.pin_memory / offload_optimizer.pin_memory",
        "DeepSpeed 0.3.15 (ZeRO-Infinity)",
        read=False,
    ),
}
