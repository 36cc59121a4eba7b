"""DeepSpeed JSON: schema (pydantic-strict sections vs ignored top-level keys), 'auto', cross-field rules,
and the JSON referenced from an accelerate YAML (resolution, refused keys, precision)."""

from __future__ import annotations

import json

from disttune.config import check_config
from disttune.config.check import check_files

GOOD = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto", "max_live_parameters": 1e9},
}


def run(tmp_path, data: dict, **kwargs):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return check_config(path, **kwargs)


def one(findings, key):
    hits = [f for f in findings if f.key == key]
    assert len(hits) == 1, findings
    return hits[0]


def test_good_json_with_auto_and_aliases(tmp_path):
    assert run(tmp_path, GOOD) == []


def test_unknown_key_in_strict_section_is_an_error(tmp_path):
    data = {**GOOD, "zero_optimization": {"stage": 3, "overlap_com": True}}
    f = one(run(tmp_path, data), "zero_optimization.overlap_com")
    assert f.severity == "error" and "Extra inputs are not permitted" in f.message and "overlap_comm" in f.fix


def test_unknown_top_level_key_is_silently_ignored_so_an_error(tmp_path):
    f = one(run(tmp_path, {**GOOD, "monitor_config": {}, "_comment": "fine"}), "monitor_config")
    assert f.severity == "error" and "ignores" in f.message


def test_top_level_typo_is_an_error(tmp_path):
    data = {k: v for k, v in GOOD.items() if k != "gradient_clipping"}
    f = one(run(tmp_path, {**data, "gradient_clippin": 1.0}), "gradient_clippin")
    assert f.severity == "error" and "gradient_clipping" in f.fix
    # with the real key present too, the stray one is ignored (still an error), without "keeps its default"
    f = one(run(tmp_path, {**GOOD, "gradient_clippin": 1.0}), "gradient_clippin")
    assert f.severity == "error" and "keeps its default" not in f.message


def test_auto_where_nobody_fills_it(tmp_path):
    data = {**GOOD, "zero_optimization": {"stage": 3, "sub_group_size": "auto"}}
    f = one(run(tmp_path, data), "zero_optimization.sub_group_size")
    assert (
        f.severity == "error"
        and "not found in kwargs" in f.message
        and "DeepSpeed alone drops it" in f.message
    )
    assert (
        "'auto' is not allowed"
        in one(run(tmp_path, {**GOOD, "steps_per_print": "auto"}), "steps_per_print").message
    )


def test_string_where_a_number_belongs(tmp_path):
    f = one(run(tmp_path, {**GOOD, "train_micro_batch_size_per_gpu": "4"}), "train_micro_batch_size_per_gpu")
    assert "whole number" in f.message and "quotes" in f.fix


def test_stage_range_and_missing_zero(tmp_path):
    assert (
        one(run(tmp_path, {**GOOD, "zero_optimization": {"stage": 5}}), "zero_optimization.stage").severity
        == "error"
    )
    f = one(run(tmp_path, {"train_batch_size": "auto"}), "zero_optimization")
    assert "Please specify the ZeRO optimization config" in f.message


def test_param_offload_needs_zero3_and_nvme_needs_path(tmp_path):
    data = {
        **GOOD,
        "zero_optimization": {
            "stage": 2,
            "offload_param": {"device": "cpu"},
            "offload_optimizer": {"device": "nvme"},
        },
    }
    found = run(tmp_path, data)
    assert "needs ZeRO-3" in one(found, "zero_optimization.offload_param.device").message
    assert "nvme_path is missing" in one(found, "zero_optimization.offload_optimizer.nvme_path").message


def test_zero3_only_gather_is_ignored_under_stage_2(tmp_path):
    data = {**GOOD, "zero_optimization": {"stage": 2, "stage3_gather_16bit_weights_on_model_save": True}}
    f = one(run(tmp_path, data), "zero_optimization.stage3_gather_16bit_weights_on_model_save")
    assert f.severity == "error"


def test_fp16_and_bf16_both_enabled(tmp_path):
    f = one(run(tmp_path, {**GOOD, "fp16": {"enabled": True}, "bf16": {"enabled": True}}), "bf16.enabled")
    assert "only one" in f.message


def test_batch_triple(tmp_path):
    data = {
        **GOOD,
        "train_batch_size": 64,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
    }
    f = one(run(tmp_path, data, num_processes=4), "train_batch_size")
    assert "4 x 2 x 4 = 32" in f.message and "32" in f.fix
    assert run(tmp_path, data, num_processes=8) == []
    assert run(tmp_path, data) == []  # world unknown, 64 is a multiple of 8
    f = one(run(tmp_path, {**data, "train_batch_size": 12}), "train_batch_size")
    assert "not a multiple" in f.message


def _pair(tmp_path, yaml_body: str, data: dict, sub: str = "cfg"):
    folder = tmp_path / sub
    folder.mkdir()
    (folder / "ds.json").write_text(json.dumps(data))
    path = folder / "acc.yaml"
    path.write_text("distributed_type: DEEPSPEED\nnum_processes: 4\n" + yaml_body)
    return path


def test_config_file_resolved_next_to_the_yaml_and_checked(tmp_path):
    path = _pair(
        tmp_path,
        "deepspeed_config:\n  deepspeed_config_file: ds.json\n",
        {
            **GOOD,
            "train_batch_size": 10,
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
        },
    )
    report = check_files([path], cwd=tmp_path)
    # not where a launch from tmp_path opens it: an error naming the folder to launch from
    where = one(report.findings, "deepspeed_config.deepspeed_config_file")
    assert where.severity == "error" and f"launch from {tmp_path / 'cfg'}" in where.fix
    assert "the config's folder" in where.message
    assert len(report.files) == 2  # and the JSON found there is checked
    f = one(report.findings, "train_batch_size")
    assert f.file.endswith("ds.json") and "1 x 1 x 4 = 4" in f.message


def test_config_file_resolved_from_cwd_first(tmp_path):
    path = _pair(tmp_path, "deepspeed_config:\n  deepspeed_config_file: cfg/ds.json\n", GOOD)
    report = check_files([path], cwd=tmp_path)
    assert report.findings == [] and "current directory" in report.notes[0]


def test_missing_config_file(tmp_path):
    path = _pair(tmp_path, "deepspeed_config:\n  deepspeed_config_file: nope.json\n", GOOD)
    f = one(check_config(path), "deepspeed_config.deepspeed_config_file")
    assert "does not exist" in f.message


def test_config_file_refuses_accelerate_keys_and_mixed_precision(tmp_path):
    body = (
        "mixed_precision: bf16\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n  zero_stage: 3\n"
        "  gradient_accumulation_steps: 2\n  zero3_init_flag: true\n"
    )
    path = _pair(tmp_path, body, {**GOOD, "fp16": {"enabled": True}, "bf16": {"enabled": False}})
    found = check_files([path], cwd=tmp_path).findings
    for key in ("deepspeed_config.zero_stage", "deepspeed_config.gradient_accumulation_steps"):
        f = one(found, key)
        assert "next to deepspeed_config_file" in f.message and "DeepSpeed JSON" in f.fix
    mp = one(found, "mixed_precision")
    assert "contradicts" in mp.message and "fp16" in mp.message
    assert not [f for f in found if f.key == "deepspeed_config.zero3_init_flag"]


def test_zero3_init_flag_uses_the_json_stage(tmp_path):
    body = "deepspeed_config:\n  deepspeed_config_file: ds.json\n  zero3_init_flag: true\n"
    path = _pair(tmp_path, body, {**GOOD, "zero_optimization": {"stage": 1}})
    f = one(check_files([path], cwd=tmp_path).findings, "deepspeed_config.zero3_init_flag")
    assert "ZeRO stage 1" in f.message


def test_unreadable_json_is_a_finding_not_a_crash(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"zero_optimization": {"stage": 2},}')
    f = check_config(path)[0]
    assert f.severity == "error" and "bad.json:1" in f.message


def test_numbers_below_what_deepspeed_runs(tmp_path):
    data = {
        **GOOD,
        "gradient_accumulation_steps": 0,
        "gradient_clipping": -0.5,
        "train_micro_batch_size_per_gpu": 0,
    }
    found = run(tmp_path, data)
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_micro_batch_size_per_gpu"):
        f = one(found, key)
        assert f.severity == "error" and "must be at least" in f.message
    assert "turns clipping off" in one(found, "gradient_clipping").message
    assert run(tmp_path, {**GOOD, "gradient_clipping": 0}) == []  # 0 means off, as written


def test_renamed_keys_name_successor_and_release(tmp_path):
    data = {
        **GOOD,
        "zero_optimization": {
            "stage": 3,
            "stage3_gather_fp16_weights_on_model_save": True,
            "cpu_offload_use_pin_memory": True,
        },
    }
    found = run(tmp_path, data)
    old = one(found, "zero_optimization.stage3_gather_fp16_weights_on_model_save")
    assert old.severity == "warning" and "'stage3_gather_16bit_weights_on_model_save'" in old.message
    assert "DeepSpeed 0.6.0" in old.message and "still maps it" in old.message
    assert "under accelerate it works too" in old.message
    assert old.fix == "use stage3_gather_16bit_weights_on_model_save instead"
    dropped = one(found, "zero_optimization.cpu_offload_use_pin_memory")
    assert dropped.severity == "error" and "no longer reads it" in dropped.message


def test_kind_comes_from_the_content_not_the_extension(tmp_path):
    ds = tmp_path / "zero2.yaml"  # a DeepSpeed JSON saved as .yaml (THUDM/CogVideo)
    ds.write_text(json.dumps(GOOD))
    report = check_files([ds])
    assert report.findings == [] and "read as a DeepSpeed config" in report.notes[0]
    acc = tmp_path / "fsdp.json"  # an accelerate config written as JSON (modelscope/ms-swift)
    acc.write_text(
        json.dumps({"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": {"fsdp_version": 2}})
    )
    report = check_files([acc])
    assert report.findings == [] and "read as an accelerate config" in report.notes[0]
    unknown = tmp_path / "x.conf"
    unknown.write_text("{}")
    report = check_files([unknown])
    assert "assumed from the .conf extension" in report.notes[0]


def test_fixed_train_batch_size_must_split_over_accumulation_and_processes(tmp_path):
    # diffusers' dreambooth config: train_batch_size 2, accumulation 1, launched on 8 processes
    data = {**GOOD, "train_batch_size": 2, "gradient_accumulation_steps": 1}
    f = one(run(tmp_path, data, num_processes=8), "train_batch_size")
    assert f.severity == "error" and "1 x 8 = 8" in f.message and "0.25" in f.message
    assert run(tmp_path, data, num_processes=2) == []
    assert run(tmp_path, data) == []  # the number of processes is unknown: nothing to say


def test_deepspeed_keys_misplaced_in_an_accelerate_config_do_not_change_its_kind(tmp_path):
    path = tmp_path / "acc.yaml"
    path.write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\ngradient_accumulation_steps: 4\ngradient_clipping: 1.0\n"
    )
    report = check_files([path])
    assert report.notes == [] and {f.key for f in report.findings} == {
        "gradient_accumulation_steps",
        "gradient_clipping",
    }
    assert all("unknown top-level keys" in f.message for f in report.findings)


def _repo(tmp_path):
    """A repository whose accelerate config names its DeepSpeed JSON relative to the repository root."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "configs").mkdir()
    (repo / "configs" / "ds.json").write_text(json.dumps(GOOD))
    yaml_path = repo / "configs" / "acc.yaml"
    yaml_path.write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: configs/ds.json\n"
    )
    return repo, yaml_path


def test_a_path_relative_to_the_repository_root_says_where_to_launch_from(tmp_path, monkeypatch):
    repo, yaml_path = _repo(tmp_path)
    monkeypatch.chdir(repo / "configs")  # the config's own folder: the launch would not find it from here
    report = check_files([yaml_path.name])
    f = one(report.findings, "deepspeed_config.deepspeed_config_file")
    assert f.severity == "error" and "relative to the repository root" in f.message
    assert f"launch from {repo}" in f.fix and len(report.files) == 2  # the JSON is still checked
    monkeypatch.chdir(repo)  # where the repository's scripts launch: found, as the launch finds it
    report = check_files(["configs/acc.yaml"])
    assert report.findings == [] and "as accelerate opens it" in report.notes[0]


def test_a_missing_path_names_each_place_once(tmp_path, monkeypatch):
    path = _pair(tmp_path, "deepspeed_config:\n  deepspeed_config_file: nope.json\n", GOOD)
    monkeypatch.chdir(path.parent)  # the current directory is the config's folder: one path, not "X and X"
    f = one(check_files([path.name]).findings, "deepspeed_config.deepspeed_config_file")
    assert f.severity == "error" and "(looked at nope.json, and relative to every folder above" in f.message
    monkeypatch.chdir(tmp_path)
    f = one(check_files([path]).findings, "deepspeed_config.deepspeed_config_file")
    assert "looked at nope.json and cfg/nope.json" in f.message


def test_a_tilde_is_not_expanded_by_the_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ds.json").write_text(json.dumps(GOOD))
    path = _pair(tmp_path, "deepspeed_config:\n  deepspeed_config_file: ~/ds.json\n", GOOD)
    f = one(check_files([path], cwd=tmp_path).findings, "deepspeed_config.deepspeed_config_file")
    assert f.severity == "error" and "nothing expands '~'" in f.message and str(tmp_path / "ds.json") in f.fix
