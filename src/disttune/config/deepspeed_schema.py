"""The typed model of a DeepSpeed JSON config, written down as data (DeepSpeed 0.19.8).

Sources: ``deepspeed/runtime/config.py`` and ``constants.py`` (top-level keys, read with ``dict.get``:
an unknown top-level key is silently ignored), and the pydantic models of ``runtime/zero/config.py``,
``zero/offload_config.py``, ``precision_config.py``, ``tensor_parallel/config.py``, ``compile/config.py``,
``comm/config.py`` and ``monitor/config.py``. Those models forbid extra keys, so an unknown key inside
them makes DeepSpeed stop with a validation error. Pydantic aliases are listed under both names.

``auto`` is legal exactly where accelerate (``DeepSpeedPlugin``, ``Accelerator._prepare_deepspeed``) or
HF Trainer (``HfTrainerDeepSpeedConfig``) replace it before DeepSpeed sees the config.
"""

from __future__ import annotations

from disttune.config.schema import (
    ACCUMULATION,
    ANY,
    BOOL,
    BOOLISH,
    CLIPPING,
    DICT,
    FLOATISH,
    INTISH,
    STR,
    Key,
    Section,
    enum,
    sec,
)

_FORBID = "DeepSpeed validates this section strictly and stops with 'Extra inputs are not permitted'"
_IGNORED = "DeepSpeed reads only the keys it knows and ignores this one, so it has no effect"

OFFLOAD_DEVICE = enum("none", "cpu", "nvme", auto=True)
INT_AUTO = Key("intish", auto=True)

OFFLOAD_PARAM = {
    "device": OFFLOAD_DEVICE,
    "nvme_path": Key("str", auto=True),
    "buffer_count": INTISH,
    "buffer_size": INTISH,
    "max_in_cpu": INTISH,
    "pin_memory": BOOLISH,
}
OFFLOAD_OPTIMIZER = {
    "device": OFFLOAD_DEVICE,
    "nvme_path": Key("str", auto=True),
    "buffer_count": INTISH,
    "pin_memory": BOOLISH,
    "pipeline_read": BOOLISH,
    "pipeline_write": BOOLISH,
    "fast_init": BOOLISH,
    "ratio": FLOATISH,
    "super_offload": BOOLISH,
    "cpuadam_cores_perc": FLOATISH,
}
ZENFLOW = {
    "topk_ratio": FLOATISH,
    "select_strategy": STR,
    "select_interval": ANY,
    "update_interval": ANY,
    "overlap_step": BOOLISH,
    "offload": BOOLISH,
    "auto_ratio": FLOATISH,
    "full_warm_up_rounds": INTISH,
    "pt_reserved_cores_perc": FLOATISH,
    "steps_per_epoch": INTISH,
}

# DeepSpeedZeroConfig: (field name, alias) pairs are both accepted (populate_by_name=True).
_ZERO_BOOLS = (
    "contiguous_gradients",
    "reduce_scatter",
    "use_multi_rank_bucket_allreduce",
    "allgather_partitions",
    "overlap_comm",
    "compute_grad_norm",
    "load_from_fp32_weights",
    "elastic_checkpoint",
    "cpu_offload_param",
    "cpu_offload_use_pin_memory",
    "cpu_offload",
    "stage3_gather_fp16_weights_on_model_save",
    "ignore_unused_parameters",
    "legacy_stage1",
    "round_robin_gradients",
    "parameter_alignment",
    "zero_quantized_weights",
    "zero_quantized_nontrainable_weights",
    "zero_quantized_gradients",
    "memory_efficient_linear",
    "pipeline_loading_checkpoint",
    "override_module_apply",
    "log_trace_cache_warnings",
    "enable_sanity_checks",
    "save_muon_momentum_buffer_in_memory",
    "use_all_reduce_for_fetch_params",
    "stage3_use_all_reduce_for_fetch_params",
    "allgather_sequential",
    "stage3_allgather_sequential",
)
_ZERO_INTS = (
    "allgather_bucket_size",
    "sub_group_size",
    "model_persistence_threshold",
    "stage3_model_persistence_threshold",
    "max_live_parameters",
    "stage3_max_live_parameters",
    "max_reuse_distance",
    "stage3_max_reuse_distance",
    "module_granularity_threshold",
    "stage3_module_granularity_threshold",
    "zero_hpz_partition_size",
    "prefetch_bucket_size",
    "param_persistence_threshold",
)
ZERO_OPTIMIZATION = {
    "stage": Key("intish", (0, 1, 2, 3), auto=True),
    **dict.fromkeys(_ZERO_BOOLS, BOOLISH),
    **dict.fromkeys(_ZERO_INTS, Key("intish", minimum=0, why_minimum=": DeepSpeed refuses negative sizes")),
    # filled from the model's hidden size by HF Trainer / accelerate when "auto"
    "reduce_bucket_size": INT_AUTO,
    "stage3_prefetch_bucket_size": INT_AUTO,
    "stage3_param_persistence_threshold": INT_AUTO,
    "gather_16bit_weights_on_model_save": BOOLISH,
    "stage3_gather_16bit_weights_on_model_save": Key("boolish", auto=True),
    "offload_param": sec(OFFLOAD_PARAM, unknown="error", unknown_why=_FORBID),
    "offload_optimizer": sec(OFFLOAD_OPTIMIZER, unknown="error", unknown_why=_FORBID),
    "zenflow": sec(ZENFLOW, unknown="error", unknown_why=_FORBID),
    "leaf_module": sec(
        {"classes": ANY, "names": ANY, "name_suffixes": ANY}, unknown="error", unknown_why=_FORBID
    ),
}

FP16 = {
    "enabled": Key("boolish", auto=True),
    "auto_cast": BOOLISH,
    "loss_scale": FLOATISH,
    "initial_scale_power": INTISH,
    "loss_scale_window": INTISH,
    "hysteresis": INTISH,
    "consecutive_hysteresis": BOOLISH,
    "min_loss_scale": INTISH,
    "fp16_master_weights_and_grads": BOOLISH,
}
BF16 = {
    "enabled": Key("boolish", auto=True),
    "immediate_grad_update": BOOLISH,
    "check_grad_overflow": BOOLISH,
    "bf16_master_weights_and_grads": BOOLISH,
    "bf16_optimizer_states": BOOLISH,
}
TENSOR_PARALLEL = {
    "dtype": ANY,
    "autotp_size": INTISH,
    "tp_overlap_comm": BOOLISH,
    "vocab_parallel_lm_head": BOOLISH,
    "vocab_parallel_ce_backend": enum("torch", "liger"),
    "tensor_parallel": DICT,
    "tp": DICT,
    "injection_policy_tuple": ANY,
    "partition_config": DICT,
    "preset_model": STR,
    "keep_module_on_host": BOOLISH,
    "replace_with_kernel_inject": BOOLISH,
    "kernel_inject": BOOLISH,
}
_COMPILE_BOOLS = (
    "deepcompile",
    "autoep_non_moe",
    "free_activation",
    "offload_activation",
    "offload_activation_pin_memory",
    "offload_opt_states",
    "double_buffer",
    "symmetric_memory",
    "debug_log",
    "offload_parameters",
    "sync_before_reduce",
    "sync_after_reduce",
    "sync_before_allgather",
    "sync_after_allgather",
    "keep_int_input_tensors",
    "keep_all_input_tensors",
)
COMPILE = {**dict.fromkeys(_COMPILE_BOOLS, BOOLISH), "free_activation_threshold": INTISH, "passes": ANY}
COMMS_LOGGER = {
    "enabled": BOOLISH,
    "prof_all": BOOLISH,
    "prof_ops": ANY,
    "verbose": BOOLISH,
    "debug": BOOLISH,
}
_MONITOR = {"enabled": BOOLISH, "output_path": STR, "job_name": STR}
WANDB = {"enabled": BOOLISH, "group": STR, "team": STR, "project": STR}
COMET = {
    "enabled": BOOLISH,
    "samples_log_interval": INTISH,
    **dict.fromkeys(("project", "workspace", "api_key", "experiment_name", "experiment_key", "mode"), STR),
    "online": BOOLISH,
}
HYBRID_ENGINE = {
    "enabled": BOOLISH,
    "max_out_tokens": INTISH,
    "inference_tp_size": INTISH,
    "release_inference_cache": BOOLISH,
    "pin_parameters": BOOLISH,
    "tp_gather_partition_size": INTISH,
    "enable_cuda_graph": BOOLISH,
}
# optimizer/scheduler: DeepSpeed reads type and params (params are the optimizer's own keyword arguments,
# filled by HF Trainer / accelerate where "auto", so they are not checked here).
OPTIMIZER = {"type": STR, "params": DICT, "legacy_fusion": BOOLISH}
SCHEDULER = {"type": STR, "params": DICT}

# Sections DeepSpeed knows but that disttune does not model key by key.
_OPEN_SECTIONS = (
    "amp",
    "activation_checkpointing",
    "flops_profiler",
    "autotuning",
    "aio",
    "checkpoint",
    "data_types",
    "elasticity",
    "pipeline",
    "nebula",
    "quantize_training",
    "eigenvalue",
    "progressive_layer_drop",
    "curriculum_learning",
    "data_efficiency",
    "compression_training",
    "sparse_attention",
    "weight_quantization",
    "expert_parallel",
    "timers",
    "torch_autocast",
    "datastates_ckpt",
)


def _strict(keys: dict[str, Key]) -> Key:
    return sec(keys, unknown="error", unknown_why=_FORBID)


DEEPSPEED_JSON = Section(
    {
        "train_batch_size": Key("int", auto=True, minimum=1, why_minimum=": DeepSpeed asserts it is above 0"),
        "train_micro_batch_size_per_gpu": Key(
            "int", auto=True, minimum=1, why_minimum=": DeepSpeed asserts it is above 0"
        ),
        "gradient_accumulation_steps": Key("int", auto=True, minimum=1, why_minimum=ACCUMULATION.why_minimum),
        "gradient_clipping": CLIPPING,
        "steps_per_print": INTISH,
        "wall_clock_breakdown": BOOL,
        "memory_breakdown": BOOL,
        "dump_state": BOOL,
        "prescale_gradients": BOOL,
        "gradient_predivide_factor": FLOATISH,
        "sparse_gradients": BOOL,
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
        "graph_harvesting": BOOL,
        "disable_python_gc": ANY,
        "managed_gradient_accumulation": ANY,
        "zero_optimization": _strict(ZERO_OPTIMIZATION),
        "fp16": _strict(FP16),
        "bf16": _strict(BF16),
        "bfloat16": _strict(BF16),  # the old name of "bf16"
        "tensor_parallel": _strict(TENSOR_PARALLEL),
        "compile": _strict(COMPILE),
        "comms_logger": _strict(COMMS_LOGGER),
        "tensorboard": _strict(_MONITOR),
        "csv_monitor": _strict(_MONITOR),
        "wandb": _strict(WANDB),
        "comet": _strict(COMET),
        "hybrid_engine": _strict(HYBRID_ENGINE),
        "optimizer": sec(OPTIMIZER, unknown="warning", unknown_why=_IGNORED),
        "scheduler": sec(SCHEDULER, unknown="warning", unknown_why=_IGNORED),
        **dict.fromkeys(_OPEN_SECTIONS, DICT),
    },
    unknown="warning",
    unknown_why=_IGNORED,
    skip_underscore=True,
)
