"""The typed model of an accelerate config file, written down as data.

Taken from accelerate 1.15 (``commands/config/config_args.py`` ``ClusterConfig`` / ``SageMakerConfig``,
``commands/launch.py`` arguments, ``utils/launch.py`` and the ``DeepSpeedPlugin`` /
``FullyShardedDataParallelPlugin`` dataclasses). It is data, not an import of accelerate: accelerate
imports torch, and ``disttune check`` must answer instantly. The value sets accelerate enforces (its enums
and constants) and the plugin's refused keys come from ``derived.py`` (read from accelerate itself); the
key kinds, severities and messages are ours.

How accelerate treats keys decides the severity of an unknown one: an unknown *top-level* key makes
``accelerate launch`` refuse the file (``ValueError: ... had unknown keys``); an unknown key inside
``deepspeed_config`` / ``fsdp_config`` / ... is copied onto the launcher's arguments and then never read,
so it is silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from disttune.config.derived import ACCELERATE, accelerate_values

# Value kinds. "bool"/"int"/"float" are strict (accelerate uses the value as is); the "...ish" kinds
# also accept the strings accelerate or pydantic convert ("true", "4", "1e9").
KINDS = (
    "any",
    "str",
    "bool",
    "boolish",
    "int",
    "intish",
    "float",
    "floatish",
    "enum",
    "list",
    "dict",
    "section",
)

TRUE_STRINGS = ("y", "yes", "t", "true", "on", "1")
FALSE_STRINGS = ("n", "no", "f", "false", "off", "0")


@dataclass(frozen=True)
class Key:
    """One known key.

    Attributes:
        kind: one of ``KINDS``.
        choices: allowed values (for ``enum`` compared after ``fold``; for numbers compared as is).
        fold: ``"upper"`` / ``"lower"`` when the consumer case-folds the value before comparing.
        auto: whether the string ``"auto"`` is legal (filled in later by accelerate or HF Trainer).
        section: the nested section when ``kind == "section"``.
        minimum: the smallest number the consumer can run as written (``None``: not checked).
        why_minimum: what happens below it, for the message.
        bounds: further limits the consumer enforces, as ``(("gt", 0), ("le", 1.0))`` (pydantic's names).
        nullable: whether ``null`` is accepted (an unset key is always fine).
        origin: who enforces the limits and values, for the message (``DeepSpeedZeroConfig``).
    """

    kind: str = "any"
    choices: tuple = ()
    fold: str = ""
    auto: bool = False
    section: Section | None = None
    minimum: float | None = None
    why_minimum: str = ""
    bounds: tuple = ()
    nullable: bool = True
    origin: str = ""


@dataclass(frozen=True)
class Section:
    """A mapping of known keys.

    Attributes:
        keys: key name -> ``Key``.
        unknown: severity of an unknown key (``"error"``, ``"warning"``) or ``"open"`` (not checked).
        unknown_why: what happens to an unknown key, for the message.
        prefix: accelerate adds this prefix to keys that lack it (``fsdp_``, ``fp8_``, ``dynamo_``).
        skip_underscore: keys starting with ``_`` are comments (the DeepSpeed JSON convention).
    """

    keys: dict[str, Key] = field(default_factory=dict)
    unknown: str = "error"
    unknown_why: str = ""
    prefix: str = ""
    skip_underscore: bool = False

    def lookup(self, name: str) -> Key | None:
        """The spec of ``name`` (after accelerate's prefixing), or ``None`` if unknown."""
        if name in self.keys:
            return self.keys[name]
        if self.prefix and not name.startswith(self.prefix):
            return self.keys.get(self.prefix + name)
        return None


def sec(keys: dict[str, Key], **kwargs) -> Key:
    """A ``Key`` holding a nested section."""
    return Key("section", section=Section(keys, **kwargs))


def enum(*choices: str, fold: str = "", auto: bool = False) -> Key:
    """A string key with a fixed set of values."""
    return Key("enum", tuple(choices), fold=fold, auto=auto)


ANY, STR, BOOL, BOOLISH = Key("any"), Key("str"), Key("bool"), Key("boolish")

# Numbers with a floor (shared by the accelerate config and the DeepSpeed JSON).
ACCUMULATION = Key(
    "intish", auto=True, minimum=1, why_minimum=": every optimizer step needs at least one micro-batch"
)
CLIPPING = Key(
    "floatish",
    auto=True,
    minimum=0,
    why_minimum=(
        ": DeepSpeed clips only when it is above 0, so a negative value silently turns clipping off (0 means off)"
    ),
)
# Values the launch line can supply (`accelerate launch --num_processes 8 ...`): rules.py warns, naming the flag,
# when one is needed and absent; null is accepted only where accelerate's ClusterConfig defaults to null.
LAUNCH_LINE_FLAGS = {
    name: f"--{name}"
    for name in ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")
}


def _nullable(name: str) -> bool:
    return bool(ACCELERATE["config_fields"]["ClusterConfig"][name].get("nullable"))


PROCESSES = Key(
    "int",
    minimum=1,
    why_minimum=": accelerate needs at least one process to run",
    nullable=_nullable("num_processes"),
    origin="accelerate launch",
)
INT, INTISH, FLOAT, FLOATISH, LIST, DICT = (
    Key("int"),
    Key("intish"),
    Key("float"),
    Key("floatish"),
    Key("list"),
    Key("dict"),
)

# accelerate's enums (utils/dataclasses.py) and constants (utils/constants.py), read from accelerate itself.
DISTRIBUTED_TYPES = accelerate_values("DistributedType")
SAGEMAKER_DISTRIBUTED_TYPES = accelerate_values("SageMakerDistributedType")
COMPUTE_ENVIRONMENTS = accelerate_values("ComputeEnvironment")
MIXED_PRECISIONS = accelerate_values("PrecisionType")
# utils/launch.py: DynamoBackend(args.dynamo_backend.upper()), a ValueError for anything else
DYNAMO_BACKENDS = accelerate_values("DynamoBackend")
DEEPSPEED_MULTINODE_LAUNCHERS = accelerate_values("DEEPSPEED_MULTINODE_LAUNCHERS")
FSDP_SHARDING_STRATEGIES = accelerate_values("FSDP_SHARDING_STRATEGY")
FSDP_AUTO_WRAP_POLICIES = accelerate_values("FSDP_AUTO_WRAP_POLICY")
FSDP_BACKWARD_PREFETCH = accelerate_values("FSDP_BACKWARD_PREFETCH")
FSDP_STATE_DICT_TYPES = accelerate_values("FSDP_STATE_DICT_TYPE")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")

_IGNORED = "accelerate copies it onto the launcher's arguments and never reads it, so it has no effect"

# deepspeed_config: the `accelerate launch` DeepSpeed arguments (commands/launch.py) that utils/launch.py
# turns into ACCELERATE_* variables for DeepSpeedPlugin.
DEEPSPEED_CONFIG = Section(
    {
        "deepspeed_config_file": STR,
        "zero_stage": Key("intish", (0, 1, 2, 3)),
        "offload_optimizer_device": enum(*OFFLOAD_DEVICES, fold="lower"),
        "offload_param_device": enum(*OFFLOAD_DEVICES, fold="lower"),
        "offload_optimizer_nvme_path": STR,
        "offload_param_nvme_path": STR,
        "gradient_accumulation_steps": ACCUMULATION,
        "gradient_clipping": CLIPPING,
        "zero3_init_flag": BOOLISH,
        "zero3_save_16bit_model": BOOLISH,
        "deepspeed_hostfile": STR,
        "deepspeed_exclusion_filter": STR,
        "deepspeed_inclusion_filter": STR,
        "deepspeed_multinode_launcher": enum(
            *DEEPSPEED_MULTINODE_LAUNCHERS, fold="lower"
        ),  # the runner lower()s
        "deepspeed_moe_layer_cls_names": STR,
    },
    unknown="warning",
    unknown_why=_IGNORED,
)

# fsdp_config: keys without the `fsdp_` prefix get it (commands/launch.py, "fsdp_" + key).
FSDP_CONFIG = Section(
    {
        "fsdp_version": Key("intish", (1, 2)),
        "fsdp_offload_params": BOOLISH,
        "fsdp_min_num_params": INTISH,
        "fsdp_sharding_strategy": enum(*FSDP_SHARDING_STRATEGIES, "1", "2", "3", "4", "5", fold="upper"),
        "fsdp_reshard_after_forward": ANY,  # bool under FSDP2, a sharding strategy under FSDP1 (rules.py)
        "fsdp_auto_wrap_policy": enum(*FSDP_AUTO_WRAP_POLICIES, fold="upper"),
        "fsdp_transformer_layer_cls_to_wrap": STR,
        "fsdp_backward_prefetch": enum(*FSDP_BACKWARD_PREFETCH, "1", "2", fold="upper"),
        "fsdp_state_dict_type": enum(*FSDP_STATE_DICT_TYPES, "1", "2", "3", fold="upper"),
        "fsdp_forward_prefetch": BOOLISH,
        "fsdp_use_orig_params": BOOLISH,
        "fsdp_cpu_ram_efficient_loading": BOOLISH,
        "fsdp_sync_module_states": BOOLISH,
        "fsdp_activation_checkpointing": BOOLISH,
        "fsdp_activation_checkpointing_offload": BOOLISH,
        "fsdp_ignored_modules": STR,
    },
    unknown="warning",
    unknown_why=_IGNORED,
    prefix="fsdp_",
)

# fp8_config: launch.py `--fp8_*` names, plus the longer names `accelerate config` writes.
FP8_CONFIG = Section(
    {
        "fp8_backend": enum("AO", "TE", "MSAMP", "MS-AMP", fold="upper"),
        "fp8_use_autocast_during_eval": BOOLISH,
        "fp8_margin": INTISH,
        "fp8_interval": INTISH,
        "fp8_format": enum("HYBRID", "E4M3", "E5M2", fold="upper"),
        "fp8_amax_history_len": INTISH,
        "fp8_amax_history_length": INTISH,
        "fp8_amax_compute_algo": STR,
        "fp8_amax_compute_algorithm": STR,
        "fp8_override_linear_precision": ANY,
        "fp8_opt_level": STR,
        "fp8_optimization_level": STR,
        "fp8_enable_fsdp_float8_all_gather": BOOLISH,
        "fp8_pad_inner_dim": BOOLISH,
    },
    unknown="warning",
    unknown_why=_IGNORED,
    prefix="fp8_",
)

DYNAMO_BACKEND = dataclasses.replace(enum(*DYNAMO_BACKENDS, fold="upper"), origin="accelerate launch")
DYNAMO_CONFIG = Section(
    {
        "dynamo_backend": DYNAMO_BACKEND,
        "dynamo_mode": STR,
        "dynamo_use_fullgraph": BOOLISH,
        "dynamo_use_dynamic": BOOLISH,
        "dynamo_use_regional_compilation": BOOLISH,
    },
    unknown="warning",
    unknown_why=_IGNORED,
    prefix="dynamo_",
)

_PC = "parallelism_config_"
PARALLELISM_CONFIG = Section(
    {
        **{_PC + k: INTISH for k in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size")},
        **{_PC + k: STR for k in ("cp_backend", "cp_comm_strategy", "sp_backend", "sp_attn_implementation")},
        _PC + "sp_seq_length": ANY,
        _PC + "sp_seq_length_is_variable": BOOLISH,
    },
    unknown="warning",
    unknown_why=_IGNORED,
)

_MEGATRON_KEYS = (
    "tp_degree",
    "use_custom_fsdp",
    "no_load_optim",
    "eod_mask_loss",
    "overlap_cpu_optimizer_d2h_h2d",
    "no_save_optim",
    "optimizer_cpu_offload",
    "use_precision_aware_optimizer",
    "decoder_last_pipeline_num_layers",
    "pp_degree",
    "num_micro_batches",
    "sequence_parallelism",
    "recompute_activations",
    "use_distributed_optimizer",
    "gradient_clipping",
    "recompute_granularity",
    "recompute_method",
    "recompute_num_layers",
    "attention_backend",
    "expert_model_parallel_size",
    "context_parallel_size",
    "attention_dropout",
    "hidden_dropout",
    "attention_softmax_in_fp32",
    "expert_tensor_parallel_size",
    "calculate_per_token_loss",
    "use_rotary_position_embeddings",
)
MEGATRON_LM_CONFIG = Section(
    {"megatron_lm_" + k: ANY for k in _MEGATRON_KEYS}, unknown="warning", unknown_why=_IGNORED
)
MPIRUN_CONFIG = Section({"mpirun_hostfile": STR}, unknown="warning", unknown_why=_IGNORED)

_BASE = {
    "compute_environment": enum(*COMPUTE_ENVIRONMENTS),
    "distributed_type": ANY,  # checked in rules.py (YAML's unquoted NO is False)
    "mixed_precision": ANY,  # checked in rules.py (YAML's unquoted no is False)
    "use_cpu": BOOL,
    "debug": BOOL,
    "fp16": ANY,  # legacy key, turned into mixed_precision by BaseConfig.process_config
    "dynamo_backend": DYNAMO_BACKEND,  # legacy key, turned into dynamo_config
    "enable_cpu_affinity": BOOL,
    "dynamo_config": Key("section", section=DYNAMO_CONFIG),
}

_TOP_UNKNOWN = "accelerate launch refuses a config with unknown top-level keys (ValueError: had unknown keys)"

# ClusterConfig (compute_environment: LOCAL_MACHINE, the default).
CLUSTER_CONFIG = Section(
    {
        **_BASE,
        "num_processes": PROCESSES,
        "machine_rank": Key("int", nullable=_nullable("machine_rank"), origin="accelerate launch"),
        "num_machines": Key(
            "int",
            minimum=1,
            why_minimum=": a run takes place on at least one machine",
            nullable=_nullable("num_machines"),
            origin="accelerate launch",
        ),
        "gpu_ids": ANY,  # a string ("all" or "0,1"); checked in rules.py
        "main_process_ip": Key("str", nullable=_nullable("main_process_ip")),
        "main_process_port": ANY,  # checked in rules.py
        "rdzv_backend": STR,
        "same_network": BOOL,
        "main_training_function": STR,
        "fp8_config": Key("section", section=FP8_CONFIG),
        "deepspeed_config": Key("section", section=DEEPSPEED_CONFIG),
        "fsdp_config": Key("section", section=FSDP_CONFIG),
        "parallelism_config": Key("section", section=PARALLELISM_CONFIG),
        "megatron_lm_config": Key("section", section=MEGATRON_LM_CONFIG),
        "mpirun_config": Key("section", section=MPIRUN_CONFIG),
        "downcast_bf16": ANY,  # TPU only; `accelerate config` writes the string 'no'
        "tpu_name": STR,
        "tpu_zone": STR,
        "tpu_use_cluster": BOOL,
        "tpu_use_sudo": BOOL,
        "command_file": STR,
        "commands": ANY,
        "tpu_vm": ANY,
        "tpu_env": ANY,
    },
    unknown="error",
    unknown_why=_TOP_UNKNOWN,
)

SAGEMAKER_CONFIG = Section(
    {
        **_BASE,
        "ec2_instance_type": STR,
        "iam_role_name": STR,
        "image_uri": STR,
        "profile": STR,
        "region": STR,
        "num_machines": Key("int", minimum=1, why_minimum=": a run takes place on at least one machine"),
        "gpu_ids": ANY,
        "base_job_name": STR,
        "pytorch_version": STR,
        "transformers_version": STR,
        "py_version": STR,
        "sagemaker_inputs_file": STR,
        "sagemaker_metrics_file": STR,
        "additional_args": DICT,
    },
    unknown="error",
    unknown_why=_TOP_UNKNOWN,
)

# deepspeed_config keys that accelerate refuses next to deepspeed_config_file
# (DeepSpeedPlugin._deepspeed_config_checks), and where each lives in the DeepSpeed JSON.
CONFIG_FILE_CONFLICTS: dict[str, str] = dict(ACCELERATE["config_file_conflicts"])
