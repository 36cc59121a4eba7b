"""Generated from the derived data: for every field DeepSpeed bounds or enumerates (and every accelerate key
whose values accelerate enforces), a value just outside is an error that names the key.

tests/unit/test_config_schema_drift.py tries the same values on the installed DeepSpeed and accelerate and
checks that they really refuse them (and accept the value just inside).
"""

from __future__ import annotations

import json

import pytest
import yaml
from derived_cases import ACCELERATE_ENUMS, accelerate_cases, deepspeed_cases, name_cases, nest

from disttune.config.check import check_files
from disttune.config.derived import INFERENCE, section_fields
from disttune.config.schema import OFFLOAD_DEVICES

CASES = deepspeed_cases()


def _errors_at(path, key: str) -> list:
    return [f for f in check_files([path]).findings if f.severity == "error" and f.key == key]


def test_every_bounded_and_enumerated_section_has_cases():
    sections = {case.section for case in CASES}
    assert {"zero_optimization", "zero_optimization.offload_optimizer", "fp16", INFERENCE} <= sections
    assert len(CASES) > 30  # the cases are generated, not a handful written by hand


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_value_just_outside_what_deepspeed_accepts_is_an_error_naming_the_key(case, tmp_path):
    base = (
        {"replace_with_kernel_inject": False}
        if case.section.startswith(INFERENCE)
        else {"zero_optimization": {}}
    )
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(nest(case, base)))
    errors = _errors_at(path, case.key)
    assert errors, f"{case}: no error naming {case.key}"
    assert all(f.fix for f in errors)


@pytest.mark.parametrize(("key", "bad"), name_cases())
def test_an_optimizer_or_scheduler_deepspeed_cannot_build_is_an_error(key, bad, tmp_path):
    block = key.split(".")[0]
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {}, block: {"type": bad, "params": {}}}))
    errors = _errors_at(path, key)
    assert errors and "cannot build" in errors[0].message and bad[:-1] in errors[0].fix


@pytest.mark.parametrize(("key", "name", "bad"), accelerate_cases(), ids=lambda v: str(v))
def test_a_misspelt_value_accelerate_refuses_is_an_error_naming_the_key(key, name, bad, tmp_path):
    strategy = "FSDP" if key.startswith("fsdp_config") else "DEEPSPEED"
    config = {"distributed_type": strategy, "num_processes": 2}
    section, _, leaf = key.rpartition(".")
    if section:
        config[section] = {leaf: bad}
    else:
        config[leaf] = bad
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump(config))
    errors = _errors_at(path, key)
    assert errors and (name != "DynamoBackend" or "INDUCTOR" in errors[0].fix), errors


def test_every_enum_accelerate_enforces_is_covered():
    assert {name for name, _ in ACCELERATE_ENUMS.values()} >= {
        "DistributedType",
        "DynamoBackend",
        "PrecisionType",
    }


def test_accelerates_offload_devices_are_deepspeeds():
    # deepspeed_config.offload_*_device is written into zero_optimization.offload_*.device
    choices = section_fields("zero_optimization.offload_optimizer")["device"]["choices"]
    assert tuple(choices) == OFFLOAD_DEVICES
