"""fsdp_config rules: versions, enums, FSDP2-only and FSDP1-only keys, launcher refusals."""

from __future__ import annotations

from disttune.config import check_config

BASE = "distributed_type: FSDP\nnum_processes: 2\nmixed_precision: bf16\nfsdp_config:\n"


def run(tmp_path, body: str):
    path = tmp_path / "f.yaml"
    path.write_text(BASE + body)
    return check_config(path)


def one(findings, key):
    hits = [f for f in findings if f.key == key]
    assert len(hits) == 1, findings
    return hits[0]


def test_clean_fsdp2(tmp_path):
    body = "  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_reshard_after_forward: true\n"
    assert run(tmp_path, body) == []


def test_version_must_be_1_or_2(tmp_path):
    assert (
        "not an allowed value"
        in one(run(tmp_path, "  fsdp_version: 3\n"), "fsdp_config.fsdp_version").message
    )


def test_enum_values(tmp_path):
    found = run(
        tmp_path,
        "  fsdp_auto_wrap_policy: TRANSFORMER_WRAP\n  fsdp_state_dict_type: FULL\n"
        "  fsdp_backward_prefetch: PRE\n  fsdp_sharding_strategy: ZERO3\n",
    )
    assert "TRANSFORMER_BASED_WRAP" in one(found, "fsdp_config.fsdp_auto_wrap_policy").fix
    for key in ("fsdp_state_dict_type", "fsdp_backward_prefetch", "fsdp_sharding_strategy"):
        assert one(found, f"fsdp_config.{key}").severity == "error"


def test_fsdp2_needs_boolean_reshard(tmp_path):
    f = one(
        run(tmp_path, "  fsdp_version: 2\n  fsdp_reshard_after_forward: FULL_SHARD\n"),
        "fsdp_config.fsdp_reshard_after_forward",
    )
    assert f.severity == "error" and "bool" in f.message


def test_fsdp1_only_keys_are_ignored_under_fsdp2(tmp_path):
    found = run(
        tmp_path,
        "  fsdp_version: 2\n  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_use_orig_params: true\n"
        "  fsdp_backward_prefetch: BACKWARD_PRE\n  fsdp_forward_prefetch: true\n",
    )
    for key in (
        "fsdp_sharding_strategy",
        "fsdp_use_orig_params",
        "fsdp_backward_prefetch",
        "fsdp_forward_prefetch",
    ):
        assert one(found, f"fsdp_config.{key}").severity == "error"


def test_fsdp2_refuses_local_state_dict(tmp_path):
    f = one(
        run(tmp_path, "  fsdp_version: 2\n  fsdp_state_dict_type: LOCAL_STATE_DICT\n"),
        "fsdp_config.fsdp_state_dict_type",
    )
    assert "does not support LOCAL_STATE_DICT" in f.message


def test_fsdp1_reshard_after_forward_loses_to_sharding_strategy(tmp_path):
    f = one(
        run(tmp_path, "  fsdp_reshard_after_forward: SHARD_GRAD_OP\n"),
        "fsdp_config.fsdp_reshard_after_forward",
    )
    assert f.severity == "error" and "FULL_SHARD" in f.message and "SHARD_GRAD_OP" in f.fix
    assert run(tmp_path, "  fsdp_version: 1\n  fsdp_reshard_after_forward: FULL_SHARD\n") == []


def test_activation_checkpointing_offload_needs_v2_and_checkpointing(tmp_path):
    found = run(tmp_path, "  fsdp_version: 1\n  fsdp_activation_checkpointing_offload: true\n")
    messages = [f.message for f in found if f.key == "fsdp_config.fsdp_activation_checkpointing_offload"]
    assert any("fsdp_version 2" in m for m in messages) and any(
        "activation_checkpointing: true" in m for m in messages
    )


def test_cpu_ram_efficient_loading_needs_sync_module_states(tmp_path):
    f = one(run(tmp_path, "  fsdp_sync_module_states: false\n"), "fsdp_config.fsdp_sync_module_states")
    assert "refuses" in f.message
    assert run(tmp_path, "  fsdp_sync_module_states: false\n  fsdp_cpu_ram_efficient_loading: false\n") == []


def test_wrap_policy_specific_keys(tmp_path):
    found = run(
        tmp_path,
        "  fsdp_auto_wrap_policy: SIZE_BASED_WRAP\n  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n",
    )
    assert one(found, "fsdp_config.fsdp_transformer_layer_cls_to_wrap").severity == "error"
    found = run(tmp_path, "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_min_num_params: 1000\n")
    assert one(found, "fsdp_config.fsdp_min_num_params").severity == "error"
