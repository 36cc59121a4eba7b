"""Keys written twice: YAML and JSON loaders keep the last value without a word; check reports them."""

from __future__ import annotations

import json

import pytest
import yaml

from disttune.config import check_config
from disttune.config.bounded import parse_json, parse_yaml


def test_yaml_duplicates_are_found_with_their_path_and_line():
    text = "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\nlist:\n  - {x: 1, x: 2}\na: 5\nd: {e: [1]}\nd: {e: [1]}\n"
    assert list(parse_yaml(text, "t").repeated) == [
        ("b.c", 5, False),
        ("list[0].x", 7, False),
        ("a", 8, False),
        ("d", 10, True),  # the same value again: nothing is lost
    ]
    assert parse_yaml("a: 1\nb: {a: 2}\n", "t").repeated == ()  # the same name in another mapping is fine
    with pytest.raises(yaml.YAMLError):
        parse_yaml("a: [unclosed\n", "t")  # not YAML: the loader reports that


def test_json_duplicates_are_found_with_their_path():
    text = '{"zero_optimization": {"stage": 2, "stage": 3}, "fp16": {"enabled": true}, "fp16": {}, "a": 1, "a": 1}'
    assert sorted(parse_json(text, "t").repeated) == [
        ("a", None, True),
        ("fp16", None, False),
        ("zero_optimization.stage", None, False),
    ]
    assert parse_json('{"a": {"b": 1}, "c": {"b": 2}}', "t").repeated == ()
    with pytest.raises(json.JSONDecodeError):
        parse_json("{not json", "t")


def test_check_reports_a_repeated_key_as_an_error(tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\nmixed_precision: bf16\n"
        "deepspeed_config:\n  zero_stage: 2\n  offload_optimizer_device: none\n  zero_stage: 3\n"
    )
    findings = check_config(config)
    assert [(f.severity, f.key) for f in findings] == [("error", "deepspeed_config.zero_stage")]
    assert "written twice in the same mapping (again on line 7)" in findings[0].message


def test_check_reports_a_repeated_key_in_the_referenced_json(tmp_path):
    ds = tmp_path / "ds.json"
    config = tmp_path / "ds.yaml"
    config.write_text(
        f"distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: {ds}\n"
    )
    ds.write_text('{"zero_optimization": {}, "train_batch_size": "auto", "train_batch_size": 8}')
    found = [(f.severity, f.file, f.key) for f in check_config(config)]
    assert ("error", str(ds), "train_batch_size") in found  # a value is lost
    # the same value twice: accelerate reads the JSON with json.load and loses nothing
    ds.write_text('{"zero_optimization": {}, "train_batch_size": "auto", "train_batch_size": "auto"}')
    assert [(f.severity, f.file, f.key) for f in check_config(config)] == [
        ("warning", str(ds), "train_batch_size")
    ]
    # given alone, as DeepSpeed opens it itself: its reader refuses any repeated key
    f = check_config(ds)[0]
    assert (f.severity, f.key) == (
        "error",
        "train_batch_size",
    ) and "Duplicate keys in DeepSpeed config" in f.message


def test_accelerates_own_test_config_with_a_key_written_twice_loads(tmp_path):
    # huggingface/accelerate tests/test_configs/0_30_0_sagemaker.yaml, which accelerate's tests load: `debug:
    # false` is written twice with the same value
    config = tmp_path / "0_30_0_sagemaker.yaml"
    config.write_text(
        "compute_environment: AMAZON_SAGEMAKER\ndebug: false\ndistributed_type: NO\nmixed_precision: fp16\n"
        "debug: false\nuse_cpu: false\nec2_instance_type: MY_TYPE\niam_role_name: MY_ROLE\n"
    )
    findings = check_config(config)
    assert [(f.severity, f.key) for f in findings] == [("warning", "debug")]
    assert "same value" in findings[0].message and "again on line 5" in findings[0].message
