"""The typed model of a DeepSpeed JSON config: DeepSpeed's own pydantic models, plus what is ours on top.

Derived (``derived.py``, read from DeepSpeed 0.19.8 itself): every section DeepSpeed validates with a
pydantic model (``zero_optimization`` and its offload blocks, ``fp16``, ``bf16``, ``tensor_parallel``,
``compile``, the monitors, ...), with each field's name and alias, type, bounds, enum values and whether
``null`` is accepted. Those models forbid extra keys, so an unknown key inside them stops DeepSpeed with a
validation error. Also derived: the keys DeepSpeed now refuses outright, and the keys accelerate or HF
Trainer fill in when they say ``"auto"``.

Ours: the top level (``deepspeed/runtime/config.py`` reads it with ``dict.get``, so an unknown top-level key
is silently ignored; a test checks every name against DeepSpeed's sources), the limits DeepSpeed enforces
in validator code rather than in field declarations (``CODE_LIMITS``, each checked against DeepSpeed by a
test), and the severities and messages.
"""

from __future__ import annotations

import dataclasses

from disttune.config.derived import (
    AUTO_FILLED,
    DEEPSPEED,
    DEEPSPEED_VERSION,
    INFERENCE,
    section_fields,
    section_model,
)
from disttune.config.schema import (
    ACCUMULATION,
    ANY,
    BOOL,
    CLIPPING,
    DICT,
    FLOATISH,
    INTISH,
    STR,
    Key,
    Section,
    sec,
)

_FORBID = "DeepSpeed validates this section strictly and stops with 'Extra inputs are not permitted'"
_IGNORED = "DeepSpeed reads only the keys it knows and ignores this one, so it has no effect"

# Where DeepSpeed's code (validators, not field declarations) refuses a value: dotted key -> Key fields.
CODE_LIMITS = {
    # DeepSpeedFP16Config._validate_loss_scale
    "fp16.loss_scale": {"bounds": (("ge", 0),)},
    # ZenFlowConfig.validate_fields
    "zero_optimization.zenflow.select_strategy": {"kind": "enum", "choices": ("auto", "step", "epoch")},
}

_KINDS = {
    "bool": "boolish",
    "int": "intish",
    "float": "floatish",
    "str": "str",
    "list": "list",
    "dict": "dict",
}


def _key(path: str, name: str, field: str, spec: dict) -> Key:
    """Our ``Key`` for the field ``field`` of DeepSpeed's model for ``path``, under the spelling ``name``.

    "auto" passes here when accelerate / HF Trainer fill either spelling in; spellings.py reports "auto"
    under the spelling they do not fill.
    """
    dotted = f"{path}.{name}"
    origin = section_model(path)
    spellings = {f"{path}.{field}", f"{path}.{spec.get('alias', field)}"}
    if spec["type"] == "section":
        key = dataclasses.replace(
            _section(spec["section"]), nullable=bool(spec.get("nullable")), origin=origin
        )
    elif spec["type"] == "enum":
        choices = tuple(spec["choices"])
        integers = all(isinstance(c, int) for c in choices)
        key = Key(
            "intish" if integers else "enum", choices, nullable=bool(spec.get("nullable")), origin=origin
        )
    else:
        kind = _KINDS.get(spec["type"], "any")
        key = Key(kind, nullable=kind == "any" or bool(spec.get("nullable")), origin=origin)
    key = dataclasses.replace(
        key, auto=bool(spellings & AUTO_FILLED), bounds=tuple(spec.get("bounds", {}).items())
    )
    return dataclasses.replace(key, **CODE_LIMITS.get(dotted, {}))


def _section(path: str) -> Key:
    """A strict section built from DeepSpeed's model for ``path`` (field names and aliases both accepted)."""
    keys: dict[str, Key] = {}
    for name, spec in section_fields(path).items():
        keys[name] = _key(path, name, name, spec)
        if spec.get("alias"):
            keys[spec["alias"]] = _key(path, spec["alias"], name, spec)
    return sec(keys, unknown="error", unknown_why=_FORBID)


def _numbers(minimum: int, why: str) -> Key:
    return Key("int", auto=True, minimum=minimum, why_minimum=why)


# Top-level keys DeepSpeed removed: it refuses a config that still has one (DeepSpeedConfigError).
REMOVED = {
    (f"{section}.{key}" if section else key): f"DeepSpeed {DEEPSPEED_VERSION} refuses this key: {message}"
    for section, keys in DEEPSPEED["removed"].items()
    for key, message in keys.items()
}

# Sections DeepSpeed knows but reads without a pydantic model: not checked key by key.
_OPEN_SECTIONS = (
    "activation_checkpointing",
    "flops_profiler",
    "autotuning",
    "aio",
    "checkpoint",
    "data_types",
    "pipeline",
    "data_efficiency",
    "expert_parallel",
    "torch_autocast",
    "datastates_ckpt",
)
OPTIMIZER = {"type": STR, "params": DICT, "legacy_fusion": Key("boolish")}
SCHEDULER = {"type": STR, "params": DICT}

_TOP = {
    "train_batch_size": _numbers(1, ": DeepSpeed asserts it is above 0"),
    "train_micro_batch_size_per_gpu": _numbers(1, ": DeepSpeed asserts it is above 0"),
    "gradient_accumulation_steps": _numbers(1, ACCUMULATION.why_minimum),
    "gradient_clipping": CLIPPING,
    "steps_per_print": INTISH,
    "wall_clock_breakdown": BOOL,
    "memory_breakdown": BOOL,
    "dump_state": BOOL,
    "prescale_gradients": BOOL,
    "gradient_predivide_factor": FLOATISH,
    "zero_allow_untested_optimizer": BOOL,
    "zero_force_ds_cpu_optimizer": BOOL,
    "communication_data_type": ANY,
    "seq_parallel_communication_data_type": ANY,
    "disable_allgather": BOOL,
    "dataloader_drop_last": BOOL,
    "vocabulary_size": INTISH,
    "log_level": STR,
    "gradient_allreduce_op": STR,
    "use_data_before_expert_parallelism": BOOL,
    "disable_python_gc": ANY,
    "managed_gradient_accumulation": ANY,
    "optimizer": sec(OPTIMIZER, unknown="warning", unknown_why=_IGNORED),
    "scheduler": sec(SCHEDULER, unknown="warning", unknown_why=_IGNORED),
    # deepspeed/utils/config.py reads only timers.throughput
    "timers": sec({"throughput": _section("timers.throughput")}, unknown="warning", unknown_why=_IGNORED),
    **dict.fromkeys(_OPEN_SECTIONS, DICT),
}
# Every top-level section DeepSpeed validates with a model of its own (derived.py's list).
_MODELLED = {path: _section(path) for path in DEEPSPEED["sections"] if "." not in path and path != INFERENCE}

DEEPSPEED_JSON = Section(
    {**_TOP, **_MODELLED, "bfloat16": _MODELLED["bf16"]},  # "bfloat16": the old name of "bf16", still read
    unknown="warning",
    unknown_why=_IGNORED,
    skip_underscore=True,
)
ZERO_OPTIMIZATION = DEEPSPEED_JSON.keys["zero_optimization"].section.keys

# deepspeed.init_inference(config=...): one strict model for the whole file.
DEEPSPEED_INFERENCE_JSON = Section(_section(INFERENCE).section.keys, unknown="error", unknown_why=_FORBID)
