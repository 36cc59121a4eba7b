"""Keys written twice: YAML and JSON loaders keep the last value without a word; check reports them."""

from __future__ import annotations

import json

import pytest
import yaml

from disttune.config import check_config
from disttune.config.bounded import parse_json, parse_yaml


def test_yaml_duplicates_are_found_with_their_path_and_line():
    text = "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\nlist:\n  - {x: 1, x: 2}\na: 5\n"
    assert list(parse_yaml(text, "t").repeated) == [("b.c", 5), ("list[0].x", 7), ("a", 8)]
    assert parse_yaml("a: 1\nb: {a: 2}\n", "t").repeated == ()  # the same name in another mapping is fine
    with pytest.raises(yaml.YAMLError):
        parse_yaml("a: [unclosed\n", "t")  # not YAML: the loader reports that


def test_json_duplicates_are_found_with_their_path():
    text = '{"zero_optimization": {"stage": 2, "stage": 3}, "fp16": {"enabled": true}, "fp16": {}}'
    assert sorted(key for key, _ in parse_json(text, "t").repeated) == ["fp16", "zero_optimization.stage"]
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
    (tmp_path / "ds.json").write_text('{"train_batch_size": "auto", "train_batch_size": "auto"}')
    config = tmp_path / "ds.yaml"
    config.write_text(
        f"distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
    )
    findings = check_config(config)
    assert ("error", str(tmp_path / "ds.json"), "train_batch_size") in [
        (f.severity, f.file, f.key) for f in findings
    ]
