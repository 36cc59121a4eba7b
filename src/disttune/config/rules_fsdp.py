"""Cross-field rules of ``fsdp_config`` (accelerate 1.15 ``FullyShardedDataParallelPlugin`` and launcher).

Facts they rest on: the launcher always exports FSDP_SHARDING_STRATEGY (default FULL_SHARD), so under
FSDP1 ``fsdp_reshard_after_forward`` is never read; under FSDP2 the plugin ignores ``sharding_strategy``,
``use_orig_params``, ``sync_module_states`` and ``forward_prefetch``, drops ``backward_prefetch``, and needs
``reshard_after_forward`` to be a boolean; the launcher refuses ``cpu_ram_efficient_loading`` without
``sync_module_states`` (both default to "true").
"""

from __future__ import annotations

from disttune.config.findings import Finding, error
from disttune.config.rules import Accelerate, as_int, truth
from disttune.config.schema import FSDP_SHARDING_STRATEGIES

_V2_IGNORED = {
    "fsdp_sharding_strategy": "use fsdp_reshard_after_forward: true (FULL_SHARD) or false (SHARD_GRAD_OP)",
    "fsdp_use_orig_params": "remove it (FSDP2 always uses the original parameters)",
    "fsdp_sync_module_states": "remove it (FSDP2 does not need it)",
}


def _strategy_name(value: object) -> str | None:
    """A FSDP1 sharding strategy value as its name (``"1"`` and ``1`` are FULL_SHARD, ...)."""
    if value is None:
        return None
    n = as_int(value)
    if n is not None and 1 <= n <= len(FSDP_SHARDING_STRATEGIES):
        return FSDP_SHARDING_STRATEGIES[n - 1]
    text = str(value).upper()
    return text if text in FSDP_SHARDING_STRATEGIES else None


def rule_fsdp(y: Accelerate) -> list[Finding]:
    """Version-specific keys, enum combinations and the launcher's own refusals."""
    if y.dtype != "FSDP":
        return []
    version = as_int(y.fsdp.get("fsdp_version", 1))
    if version not in (1, 2):
        return []  # reported by the schema check
    out = _rule_fsdp2(y) if version == 2 else _rule_fsdp1(y)
    return out + _rule_offload_and_loading(y, version) + _wrap_policy(y)


def _rule_fsdp2(y: Accelerate) -> list[Finding]:
    """What FSDP2 needs as a boolean, ignores or does not support."""
    fs, f, p = y.fsdp, y.file, "fsdp_config."
    out: list[Finding] = []
    reshard = fs.get("fsdp_reshard_after_forward")
    if reshard is not None and truth(reshard) is None:
        out.append(
            error(
                f,
                p + "fsdp_reshard_after_forward",
                reshard,
                "FSDP2 needs true or false here (accelerate: 'not supported with FSDP2, please set to a bool')",
                "use true (like FULL_SHARD / ZeRO-3) or false (like SHARD_GRAD_OP / ZeRO-2)",
            )
        )
    for key, fix in _V2_IGNORED.items():
        if key in fs:
            out.append(error(f, p + key, fs[key], "ignored under fsdp_version 2", fix))
    prefetch = fs.get("fsdp_backward_prefetch")
    if prefetch is not None and str(prefetch).upper() != "NO_PREFETCH":
        message = "FSDP2 does not support backward prefetch; accelerate sets it to None"
        out.append(error(f, p + "fsdp_backward_prefetch", prefetch, message, "remove it"))
    if truth(fs.get("fsdp_forward_prefetch")):
        message = "ignored under fsdp_version 2 (not implemented in FSDP2)"
        out.append(error(f, p + "fsdp_forward_prefetch", fs["fsdp_forward_prefetch"], message, "remove it"))
    sdt = fs.get("fsdp_state_dict_type")
    if sdt is not None and str(sdt).upper() in ("LOCAL_STATE_DICT", "2"):
        fix = "use FULL_STATE_DICT (one loadable checkpoint) or SHARDED_STATE_DICT"
        out.append(error(f, p + "fsdp_state_dict_type", sdt, "FSDP2 does not support LOCAL_STATE_DICT", fix))
    return out


def _rule_fsdp1(y: Accelerate) -> list[Finding]:
    """Under FSDP1 the launcher's sharding strategy wins over ``fsdp_reshard_after_forward``."""
    fs, reshard = y.fsdp, y.fsdp.get("fsdp_reshard_after_forward")
    effective = _strategy_name(fs.get("fsdp_sharding_strategy", "FULL_SHARD"))
    wanted = _strategy_name(reshard)
    if wanted is None and truth(reshard) is not None:
        wanted = "FULL_SHARD" if truth(reshard) else "SHARD_GRAD_OP"
    if reshard is None or wanted == effective:
        return []
    return [
        error(
            y.file,
            "fsdp_config.fsdp_reshard_after_forward",
            reshard,
            f"ignored under fsdp_version 1: accelerate launch always passes fsdp_sharding_strategy "
            f"({effective}), which wins",
            f"set fsdp_sharding_strategy: {wanted or 'FULL_SHARD'} instead",
        )
    ]


def _rule_offload_and_loading(y: Accelerate, version: int) -> list[Finding]:
    """Activation-checkpointing offload and RAM-efficient loading: the combinations accelerate refuses."""
    fs, f, p = y.fsdp, y.file, "fsdp_config."
    out: list[Finding] = []
    offload_ac = truth(fs.get("fsdp_activation_checkpointing_offload"))
    if offload_ac and version != 2:
        message = "needs fsdp_version 2 (accelerate raises otherwise)"
        out.append(
            error(
                f,
                p + "fsdp_activation_checkpointing_offload",
                True,
                message,
                "set fsdp_version: 2 or remove it",
            )
        )
    if offload_ac and not truth(fs.get("fsdp_activation_checkpointing")):
        message = "needs fsdp_activation_checkpointing: true (accelerate raises otherwise)"
        fix = "set fsdp_activation_checkpointing: true"
        out.append(error(f, p + "fsdp_activation_checkpointing_offload", True, message, fix))
    sync, efficient = (
        truth(fs.get("fsdp_sync_module_states")),
        truth(fs.get("fsdp_cpu_ram_efficient_loading")),
    )
    if sync is False and efficient is not False:
        out.append(
            error(
                f,
                p + "fsdp_sync_module_states",
                fs["fsdp_sync_module_states"],
                "accelerate launch refuses fsdp_cpu_ram_efficient_loading (default true) without "
                "fsdp_sync_module_states",
                "set fsdp_sync_module_states: true, or fsdp_cpu_ram_efficient_loading: false",
            )
        )
    return out


def _wrap_policy(y: Accelerate) -> list[Finding]:
    fs, f, p = y.fsdp, y.file, "fsdp_config."
    policy = str(fs.get("fsdp_auto_wrap_policy") or "NO_WRAP").upper()
    out: list[Finding] = []
    if fs.get("fsdp_transformer_layer_cls_to_wrap") is not None and policy != "TRANSFORMER_BASED_WRAP":
        out.append(
            error(
                f,
                p + "fsdp_transformer_layer_cls_to_wrap",
                fs["fsdp_transformer_layer_cls_to_wrap"],
                f"only used with fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP; ignored with {policy}",
                "set fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP, or remove it",
            )
        )
    if fs.get("fsdp_min_num_params") is not None and policy != "SIZE_BASED_WRAP":
        out.append(
            error(
                f,
                p + "fsdp_min_num_params",
                fs["fsdp_min_num_params"],
                f"only used with fsdp_auto_wrap_policy SIZE_BASED_WRAP; ignored with {policy}",
                "set fsdp_auto_wrap_policy: SIZE_BASED_WRAP, or remove it",
            )
        )
    return out
