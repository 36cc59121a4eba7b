"""Deprecated, aliased and removed DeepSpeed keys, said under DeepSpeed and under accelerate; a DeepSpeed JSON
judged alone as DeepSpeed judges it; a DeepSpeed inference config judged against its own model."""

from __future__ import annotations

import json

from disttune.config import check_config
from disttune.config.check import check_files

ZERO2 = {"stage": 2}


def run(tmp_path, data: dict, name: str = "ds.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return check_config(path)


def one(findings, key):
    hits = [f for f in findings if f.key == key]
    assert len(hits) == 1, findings
    return hits[0]


def test_cpu_offload_without_an_optimizer_block_fails_under_accelerate(tmp_path):
    # DeepSpeed maps it to offload_optimizer; accelerate and HF Trainer read only offload_optimizer.device,
    # hand DeepSpeed a torch optimizer, and DeepSpeed refuses it at optimizer creation
    (tmp_path / "acc.yaml").write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n"
    )
    run(tmp_path, {"zero_optimization": {**ZERO2, "cpu_offload": True}})
    found = check_files([tmp_path / "acc.yaml"], cwd=tmp_path).findings
    f = one(found, "zero_optimization.cpu_offload")
    assert f.severity == "error" and "still maps it to 'offload_optimizer'" in f.message
    assert "under accelerate / HF Trainer the launch fails" in f.message
    # the file given alone is judged as DeepSpeed judges it: it runs; what accelerate does is a warning
    f = one(
        run(tmp_path, {"zero_optimization": {**ZERO2, "cpu_offload": True}}), "zero_optimization.cpu_offload"
    )
    assert f.severity == "warning" and "still maps it to 'offload_optimizer'" in f.message
    assert (
        "under accelerate / HF Trainer the launch fails" in f.message
        and "client provided optimizer" in f.message
    )
    # with an optimizer block DeepSpeed builds its own optimizer: it works, deprecated
    data = {
        "zero_optimization": {**ZERO2, "cpu_offload": True},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
    }
    f = one(run(tmp_path, data), "zero_optimization.cpu_offload")
    assert f.severity == "warning" and "under accelerate it works too" in f.message
    data = {"zero_optimization": {**ZERO2, "cpu_offload": True}, "zero_force_ds_cpu_optimizer": False}
    assert one(run(tmp_path, data), "zero_optimization.cpu_offload").severity == "warning"


def test_a_deprecated_key_with_its_successor_stops_deepspeed(tmp_path):
    data = {"zero_optimization": {**ZERO2, "cpu_offload": False, "offload_optimizer": {"device": "cpu"}}}
    f = one(run(tmp_path, data), "zero_optimization.cpu_offload")
    assert (
        f.severity == "error"
        and "Cannot provide deprecated parameter" in f.message
        and f.fix == "remove cpu_offload"
    )
    data = {
        "zero_optimization": {
            "stage": 3,
            "stage3_gather_fp16_weights_on_model_save": True,
            "stage3_gather_16bit_weights_on_model_save": True,  # the successor, under its alias
        }
    }
    assert (
        one(run(tmp_path, data), "zero_optimization.stage3_gather_fp16_weights_on_model_save").severity
        == "error"
    )


def test_deprecated_param_offload_counts_as_offload_for_the_stage_rule(tmp_path):
    found = run(tmp_path, {"zero_optimization": {**ZERO2, "cpu_offload_param": True}})
    assert [f.severity for f in found if f.key == "zero_optimization.cpu_offload_param"] == [
        "warning",
        "error",
    ]
    assert any("parameter offload needs ZeRO-3" in f.message for f in found)


def test_a_field_under_its_name_and_its_alias_is_refused(tmp_path):
    data = {"zero_optimization": {"stage": 3, "prefetch_bucket_size": 10, "stage3_prefetch_bucket_size": 20}}
    f = one(run(tmp_path, data), "zero_optimization.prefetch_bucket_size")
    assert f.severity == "error" and "Extra inputs are not permitted" in f.message


def test_auto_under_the_spelling_accelerate_does_not_fill(tmp_path):
    data = {"zero_optimization": {"stage": 3, "prefetch_bucket_size": "auto"}}
    f = one(run(tmp_path, data), "zero_optimization.prefetch_bucket_size")
    assert (
        f.severity == "error"
        and "'stage3_prefetch_bucket_size'" in f.message
        and "not found in kwargs" in f.message
    )
    assert f.fix == "rename it to stage3_prefetch_bucket_size"
    assert run(tmp_path, {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto"}}) == []


def test_keys_deepspeed_removed_are_refused_with_its_own_words(tmp_path):
    found = run(tmp_path, {"zero_optimization": ZERO2, "amp": {"enabled": True}, "sparse_gradients": False})
    assert {f.key for f in found} == {"amp", "sparse_gradients"}
    assert all(f.severity == "error" and "DeepSpeed 0.19.8 refuses this key" in f.message for f in found)
    assert "Apex AMP" in one(found, "amp").message
    f = one(
        run(tmp_path, {"zero_optimization": {**ZERO2, "mics_shard_size": 8}}),
        "zero_optimization.mics_shard_size",
    )
    assert f.severity == "error" and "MiCS" in f.message


def test_null_where_deepspeed_wants_a_value(tmp_path):
    found = run(tmp_path, {"zero_optimization": {**ZERO2, "reduce_bucket_size": None, "overlap_comm": None}})
    f = one(found, "zero_optimization.reduce_bucket_size")  # overlap_comm is Optional in DeepSpeed: fine
    assert (
        f.severity == "error" and "null is not accepted" in f.message and "DeepSpeedZeroConfig" in f.message
    )


def test_missing_zero_optimization_is_accelerates_requirement_only(tmp_path):
    alone = one(run(tmp_path, {"train_batch_size": 8}), "zero_optimization")
    assert (
        alone.severity == "warning"
        and "fine for DeepSpeed alone" in alone.message
        and "under accelerate" in alone.message
    )
    (tmp_path / "acc.yaml").write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n"
    )
    referenced = one(check_files([tmp_path / "acc.yaml"], cwd=tmp_path).findings, "zero_optimization")
    assert (
        referenced.severity == "error" and "Please specify the ZeRO optimization config" in referenced.message
    )


def test_a_deepspeed_inference_config_is_judged_as_deepspeed_judges_it(tmp_path):
    data = {
        "dtype": "fp16",
        "replace_with_kernel_inject": True,
        "tensor_parallel": {"tp_size": 2},
        "max_tokens": 0,
    }
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(data))
    report = check_files([path])
    assert "read as a DeepSpeed inference config" in report.notes[0]
    # no training-only requirement (zero_optimization), its own bounds, and its strict keys
    assert [(f.severity, f.key) for f in report.findings] == [("error", "max_tokens")]
    f = one(run(tmp_path, {**data, "max_tokens": 8, "mp_size": 2}, "inference.json"), "mp_size")
    assert f.severity == "error" and "'tensor_parallel.tp_size' is given too" in f.message
    f = one(
        run(tmp_path, {**data, "max_tokens": 8, "replace_methd": "auto"}, "inference.json"), "replace_methd"
    )
    assert f.severity == "error" and "Extra inputs are not permitted" in f.message


def test_a_loss_scale_window_of_zero_stops_dynamic_loss_scaling(tmp_path):
    fp16 = {"enabled": True, "loss_scale": 0, "loss_scale_window": 0}
    f = one(run(tmp_path, {"zero_optimization": ZERO2, "fp16": fp16}), "fp16.loss_scale_window")
    assert f.severity == "error" and "dynamic loss scaling" in f.message
    static = {**fp16, "loss_scale": 128}  # a static scale never reads the window
    assert run(tmp_path, {"zero_optimization": ZERO2, "fp16": static}) == []
    auto = {**fp16, "enabled": "auto"}
    assert (
        one(run(tmp_path, {"zero_optimization": ZERO2, "fp16": auto}), "fp16.loss_scale_window").severity
        == "warning"
    )


def test_max_grad_norm_is_not_an_optimizer_parameter(tmp_path):
    data = {
        "zero_optimization": ZERO2,
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "max_grad_norm": 1.0}},
    }
    f = one(run(tmp_path, data), "optimizer.params.max_grad_norm")
    assert f.severity == "error" and "gradient_clipping" in f.fix


def test_auto_is_a_value_where_deepspeed_lists_it(tmp_path):
    zenflow = {"select_strategy": "auto", "select_interval": "auto", "topk_ratio": 0.2}
    assert run(tmp_path, {"zero_optimization": {"stage": 2, "zenflow": zenflow}}) == []
