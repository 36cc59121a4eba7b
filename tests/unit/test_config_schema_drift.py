"""The hand-written schema against the installed accelerate and DeepSpeed: fail, naming each key, when they differ.

`config/schema.py` and `config/deepspeed_schema.py` are written down as data so that `disttune check` never
imports torch. These tests import the real packages (only here) and derive what they accept: accelerate's
config dataclasses, its launcher's argument groups (each `*_config` section is copied onto them) and the
keys `accelerate config` writes; DeepSpeed's pydantic config models (field names and aliases). After a
version bump, a failure lists exactly what was added or removed.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

import pytest

from disttune.config import deepspeed_schema as ds_schema
from disttune.config import schema


def _diff(ours, theirs) -> str:
    return f"only in disttune: {sorted(set(ours) - set(theirs))}; only in the package: {sorted(set(theirs) - set(ours))}"


# --- accelerate --------------------------------------------------------------------------------------

accelerate = pytest.importorskip("accelerate")

# Keys that BaseConfig.process_config turns into their successor before the dataclass sees them.
ACCELERATE_LEGACY = {"fp16", "dynamo_backend"}


def test_legacy_top_level_keys_are_still_converted_by_accelerate():
    from accelerate.commands.config.config_args import BaseConfig

    source = inspect.getsource(BaseConfig.process_config)
    for key in ACCELERATE_LEGACY:
        assert f'"{key}" in config_dict' in source, key


@pytest.mark.parametrize(
    ("ours", "theirs"), [("CLUSTER_CONFIG", "ClusterConfig"), ("SAGEMAKER_CONFIG", "SageMakerConfig")]
)
def test_top_level_keys_match_accelerates_config_dataclasses(ours, theirs):
    from accelerate.commands.config import config_args

    fields = {f.name for f in dataclasses.fields(getattr(config_args, theirs))}
    keys = set(getattr(schema, ours).keys)
    assert keys == fields | ACCELERATE_LEGACY, _diff(keys, fields | ACCELERATE_LEGACY)


def _launcher_keys(group_title: str) -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    groups = {g.title: g for g in launch_command_parser()._action_groups}
    return {a.dest for a in groups[group_title]._group_actions}


def _read_by_launcher(prefix: str) -> set[str]:
    """Attributes utils/launch.py reads with getattr (copied from the config but not launcher flags)."""
    from accelerate.utils import launch

    return set(re.findall(rf'getattr\(args, "({prefix}\w+)"', inspect.getsource(launch)))


def _written_by_accelerate_config(section: str, prefix: str) -> set[str]:
    from accelerate.commands.config import cluster

    return {
        prefix + k if not k.startswith(prefix) else k
        for k in re.findall(rf'{section}\["(\w+)"\] =', inspect.getsource(cluster))
    }


SECTIONS = {
    "DEEPSPEED_CONFIG": lambda: _launcher_keys("DeepSpeed Arguments"),
    "FSDP_CONFIG": lambda: _launcher_keys("FSDP Arguments") | _read_by_launcher("fsdp_"),
    "FP8_CONFIG": lambda: (
        _launcher_keys("FP8 Arguments") | _written_by_accelerate_config("fp8_config", "fp8_")
    ),
    "DYNAMO_CONFIG": lambda: {
        k for k in _launcher_keys("Resource Selection Arguments") if k.startswith("dynamo_")
    },
    "PARALLELISM_CONFIG": lambda: _launcher_keys("ParallelismConfig Arguments"),
    "MEGATRON_LM_CONFIG": lambda: _launcher_keys("Megatron-LM Arguments"),
    "MPIRUN_CONFIG": lambda: _launcher_keys("MPI Arguments"),
}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_keys_match_what_the_launcher_reads(name):
    keys, theirs = set(getattr(schema, name).keys), SECTIONS[name]()
    assert keys == theirs, _diff(keys, theirs)


def test_every_section_of_the_cluster_config_is_compared():
    sections = {k for k, v in schema.CLUSTER_CONFIG.keys.items() if v.kind == "section"}
    compared = {name.removesuffix("_CONFIG").lower() + "_config" for name in SECTIONS}
    assert sections == compared


# --- DeepSpeed --------------------------------------------------------------------------------------


def _pydantic_keys(model) -> set[str]:
    keys = set()
    for name, f in model.model_fields.items():
        keys.add(name)
        if f.alias:
            keys.add(f.alias)
    return keys


def _models():
    pytest.importorskip("deepspeed")
    from deepspeed.comm.config import CommsLoggerConfig
    from deepspeed.compile.config import CompileConfig
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from deepspeed.runtime.config import HybridEngineConfig
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.tensor_parallel.config import TPTrainingConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    models = {
        "zero_optimization": DeepSpeedZeroConfig,
        "fp16": DeepSpeedFP16Config,
        "bf16": DeepSpeedBF16Config,
        "bfloat16": DeepSpeedBF16Config,
        "tensor_parallel": TPTrainingConfig,
        "compile": CompileConfig,
        "comms_logger": CommsLoggerConfig,
        "tensorboard": TensorBoardConfig,
        "csv_monitor": CSVConfig,
        "wandb": WandbConfig,
        "comet": CometConfig,
        "hybrid_engine": HybridEngineConfig,
    }
    # the zero_optimization sub-models, found from its field types
    for name, f in DeepSpeedZeroConfig.model_fields.items():
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if inspect.isclass(t) and issubclass(t, DeepSpeedConfigModel):
                models[f"zero_optimization.{name}"] = t
    return models


def _our_section(path: str):
    section = ds_schema.DEEPSPEED_JSON
    for part in path.split("."):
        section = section.keys[part].section
    return section


def test_strict_deepspeed_sections_match_its_pydantic_models():
    problems = []
    for path, model in _models().items():
        keys, theirs = set(_our_section(path).keys), _pydantic_keys(model)
        if keys != theirs:
            problems.append(f"{path}: {_diff(keys, theirs)}")
    assert not problems, "\n".join(problems)


def test_every_strict_section_is_compared():
    strict = {
        k
        for k, v in ds_schema.DEEPSPEED_JSON.keys.items()
        if v.kind == "section" and v.section.unknown == "error"
    }
    strict |= {
        f"zero_optimization.{k}" for k, v in ds_schema.ZERO_OPTIMIZATION.items() if v.kind == "section"
    }
    assert strict <= set(_models()), sorted(strict - set(_models()))


def test_top_level_deepspeed_keys_are_names_deepspeed_reads():
    # DeepSpeed reads its top level with dict.get on string constants spread over its runtime: every key of
    # ours must be one of those strings (the reverse cannot be derived, as nested keys use the same style).
    pytest.importorskip("deepspeed")
    import deepspeed

    root = inspect.getfile(deepspeed).rsplit("/", 1)[0]
    import pathlib

    strings = set()
    for path in pathlib.Path(root).rglob("*.py"):
        strings |= set(re.findall(r'["\'](\w+)["\']', path.read_text(encoding="utf-8", errors="replace")))
    missing = sorted(set(ds_schema.DEEPSPEED_JSON.keys) - strings)
    assert not missing, f"keys DeepSpeed never names: {missing}"


def test_renamed_table_matches_what_the_packages_still_read():
    from disttune.config import renamed

    for path, entry in renamed.ACCELERATE.items():
        section, key = path.split(".")
        read = key in SECTIONS[section.upper()]()
        assert read == entry.read, path
    zero = _models()["zero_optimization"]
    for path, entry in renamed.DEEPSPEED.items():
        section, key = path.split(".")
        assert section == "zero_optimization"
        extra = zero.model_fields[key].json_schema_extra or {}
        assert extra.get("deprecated") is True, path
        assert extra.get("set_new_param", True) == entry.read, path
