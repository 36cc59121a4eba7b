"""The schema `disttune check` uses against the installed accelerate and DeepSpeed: fail when they differ.

`disttune check` never imports torch: what DeepSpeed and accelerate declare is saved by `derive.py` into
`config/data/derived_schema.json` (`make schema`), and the rest of the schema is written down as data. These
tests import the real packages (only here): the data file is regenerated and must be identical; the values
the generated bound / enum tests use (tests/unit/derived_cases.py) are tried on the real models, which must
refuse the one just outside and accept the one just inside; the limits we took from DeepSpeed's validator
code, the deprecated keys and what accelerate reads are checked against their sources; and the hand-written
accelerate sections must list exactly the keys accelerate's launcher reads. After a version bump, a failure
says what changed and that `make schema` regenerates the data.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import pathlib
import re

import pytest
from derived_cases import ACCELERATE_ENUMS, accelerate_cases, deepspeed_cases, name_cases

from disttune.config import deepspeed_schema as ds_schema
from disttune.config import derive, derived, schema, spellings


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


# --- DeepSpeed and what accelerate / transformers read of its config ---------------------------------------


def test_the_derived_data_file_is_what_the_installed_libraries_declare():
    pytest.importorskip("deepspeed")
    fresh = derive.render(derive.derive())
    saved = derive.DATA_FILE.read_text(encoding="utf-8")
    diff = "".join(
        list(difflib.unified_diff(saved.splitlines(True), fresh.splitlines(True), "saved", "installed"))[:80]
    )
    assert fresh == saved, f"the installed libraries changed what they declare; run `make schema`:\n{diff}"


def _model(section: str):
    module, _, name = derived.DEEPSPEED["sections"][section]["model"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _refuses(model, **values) -> bool:
    try:
        model(**values)
    except (ValueError, AssertionError):  # pydantic's ValidationError is a ValueError
        return True
    return False


@pytest.mark.parametrize("case", deepspeed_cases(), ids=str)
def test_deepspeed_refuses_each_generated_value_and_accepts_the_one_inside(case):
    pytest.importorskip("deepspeed")
    model = _model(case.section)
    assert _refuses(model, **{case.spelling: case.bad}), f"DeepSpeed accepts {case}"
    assert not _refuses(model, **{case.spelling: case.good}), f"DeepSpeed refuses {case.key}={case.good!r}"


@pytest.mark.parametrize(("key", "bad"), name_cases())
def test_deepspeed_cannot_build_the_generated_optimizer_and_scheduler_names(key, bad):
    pytest.importorskip("deepspeed")
    import torch
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    if key == "optimizer.type":  # engine._configure_basic_optimizer
        assert bad.lower() not in DEEPSPEED_OPTIMIZERS and getattr(torch.optim, bad, None) is None
    else:  # engine._scheduler_from_config
        assert not hasattr(lr_schedules, bad) and not hasattr(torch.optim.lr_scheduler, bad)


def test_every_deepspeed_config_model_is_derived():
    pytest.importorskip("deepspeed")
    import deepspeed.inference.config  # noqa: F401  (the inference models)
    import deepspeed.runtime.config  # noqa: F401  (imports every model a training config is validated with)
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    known = {section["model"] for section in derived.DEEPSPEED["sections"].values()}
    not_sections = {
        "DeepSpeedMonitorConfig",  # built from tensorboard / wandb / csv_monitor / comet, each derived
        "BaseQuantConfig",  # the base of the derived quantization models
        "DeepSpeedMoEConfig",  # held by the inference config's `moe: bool | DeepSpeedMoEConfig` (checked as any)
    }
    missing = sorted(
        f"{m.__module__}.{m.__qualname__}"
        for m in set(walk(DeepSpeedConfigModel))
        if ".inference.v2" not in m.__module__
        and f"{m.__module__}.{m.__qualname__}" not in known
        and m.__name__ not in not_sections
    )
    assert not missing, f"DeepSpeed config models that derive.DEEPSPEED_MODELS does not reach: {missing}"


@pytest.mark.parametrize("key", sorted(ds_schema.CODE_LIMITS))
def test_the_limits_taken_from_deepspeeds_validator_code_hold(key):
    pytest.importorskip("deepspeed")
    section, _, name = key.rpartition(".")
    model, limits = _model(section), ds_schema.CODE_LIMITS[key]
    for op, limit in limits.get("bounds", ()):
        outside = {"ge": limit - 0.5, "gt": limit, "le": limit + 0.5, "lt": limit}[op]
        assert _refuses(model, **{name: outside}) and not _refuses(model, **{name: limit + (op == "gt")})
    for choice in limits.get("choices", ()):
        assert not _refuses(model, **{name: choice})
    if limits.get("choices"):
        assert _refuses(model, **{name: limits["choices"][0] + "x"})


def test_dynamic_loss_scaling_needs_a_positive_window_and_floor():
    # deepspeed_rules._loss_scaling states these; DeepSpeedFP16Config._validate_dynamic_loss_scale_params
    pytest.importorskip("deepspeed")
    model = _model("fp16")
    for name in ("loss_scale_window", "min_loss_scale"):
        assert _refuses(model, enabled=True, loss_scale=0, **{name: 0})
        assert not _refuses(model, enabled=False, loss_scale=0, **{name: 0})
        assert not _refuses(model, enabled=True, loss_scale=128, **{name: 0})


def test_removed_keys_are_refused_by_deepspeed_before_anything_runs():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError

    for key in ("amp", "sparse_attention"):
        with pytest.raises(DeepSpeedConfigError):
            DeepSpeedConfig({"train_batch_size": 1, key: {}})
    assert not set(ds_schema.REMOVED) & set(ds_schema.DEEPSPEED_JSON.keys)


def _reads_deepspeed_json():
    """The sources of what accelerate and HF Trainer run on a DeepSpeed JSON."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils import deepspeed as acc_deepspeed
    from transformers.integrations import deepspeed as hf_deepspeed

    parts = (Accelerator._prepare_deepspeed, DeepSpeedPlugin, acc_deepspeed, hf_deepspeed)
    return "\n".join(inspect.getsource(p) for p in parts)


def test_every_deprecated_deepspeed_key_has_its_accelerate_story():
    pytest.importorskip("deepspeed")
    deprecated = {
        f"{section}.{name}"
        for section, spec in derived.DEEPSPEED["sections"].items()
        if not section.startswith(derived.INFERENCE)
        for name, field in spec["fields"].items()
        if "deprecated" in field
    }
    assert deprecated == set(spellings.DEPRECATED), (
        "add what accelerate does with each to spellings.DEPRECATED"
    )
    source = _reads_deepspeed_json()
    for key in deprecated:  # they read the new names only: the old one means nothing to them
        assert f'"{key.rsplit(".", 1)[1]}"' not in source, key
    assert '"offload_optimizer"' in source and "zero_optimization.offload_optimizer.device" in source


@pytest.mark.parametrize(("key", "name", "bad"), accelerate_cases(), ids=str)
def test_accelerate_refuses_each_generated_value(key, name, bad):
    from accelerate.utils import constants
    from accelerate.utils import dataclasses as acc_dataclasses

    fold = {"upper": str.upper, "lower": str.lower, "": str}[ACCELERATE_ENUMS[key][1]]
    if hasattr(constants, name):  # a list accelerate (or DeepSpeed's runner) compares the folded value with
        assert fold(bad) not in getattr(constants, name)
        return
    with pytest.raises(ValueError):  # DistributedType(...), DynamoBackend(value.upper()), ...
        getattr(acc_dataclasses, name)(fold(bad))


def test_top_level_deepspeed_keys_are_names_deepspeed_reads():
    # DeepSpeed reads its top level with dict.get on string constants spread over its runtime: every key of
    # ours must be one of those strings (the reverse cannot be derived, as nested keys use the same style).
    pytest.importorskip("deepspeed")
    import deepspeed

    root = pathlib.Path(inspect.getfile(deepspeed)).parent
    strings = set()
    for path in root.rglob("*.py"):
        strings |= set(re.findall(r'["\'](\w+)["\']', path.read_text(encoding="utf-8", errors="replace")))
    missing = sorted(set(ds_schema.DEEPSPEED_JSON.keys) - strings)
    assert not missing, f"keys DeepSpeed never names: {missing}"


def test_renamed_accelerate_keys_match_what_accelerate_still_reads():
    from disttune.config import renamed

    for path, entry in renamed.ACCELERATE.items():
        section, key = path.split(".")
        read = key in SECTIONS[section.upper()]()
        assert read == entry.read, path
