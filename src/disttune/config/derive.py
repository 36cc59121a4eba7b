"""Write ``data/derived_schema.json`` from the installed DeepSpeed and accelerate: ``make schema``.

``disttune check`` must answer without importing torch, and importing DeepSpeed imports torch; so what the
libraries declare about their configs is read here, once, at build time, and saved as data that
``derived.py`` reads at run time. ``tests/unit/test_config_schema_drift.py`` runs ``derive()`` again and fails
on any difference, so a new release that adds or changes a field cannot go unnoticed.

What is read:

- DeepSpeed: every ``DeepSpeedConfigModel`` that the training config is validated with (pydantic, extra keys
  forbidden), walked from the top-level key DeepSpeed reads it from: field names, aliases, types, bounds
  (``gt``/``ge``/``lt``/``le``), enum and ``Literal`` values, whether ``null`` is accepted, and deprecated
  fields with their ``new_param``; the inference config model; the keys DeepSpeed now refuses outright
  (``_REMOVED_*_CONFIG_KEYS``); the optimizer and LR scheduler names its engine can build.
- accelerate: its enums (``DistributedType``, ``DynamoBackend``, ``PrecisionType``, ...), the FSDP and
  DeepSpeed-launcher constants, the fields of its config dataclasses (type, nullable), the
  ``DeepSpeedPlugin`` keys it refuses next to a ``deepspeed_config_file`` and where each lives in the JSON,
  and the DeepSpeed keys it fills in when they are ``"auto"``.
- transformers: the DeepSpeed keys HF Trainer fills in when ``"auto"``, and those it compares with its own
  arguments, stopping on a mismatch (``HfTrainerDeepSpeedConfig.fill_match``).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import json
import re
import types
import typing
from pathlib import Path

DATA_FILE = Path(__file__).parent / "data" / "derived_schema.json"

# Where DeepSpeed 0.19 reads each of its validated config models from (deepspeed/runtime/config.py
# DeepSpeedConfig._initialize_params, monitor/config.py, utils/config.py, comm/config.py): the dotted key
# of the section -> "module:class". Sub-models (offload_param, zenflow, ...) are found from the field types.
DEEPSPEED_MODELS = {
    "zero_optimization": "deepspeed.runtime.zero.config:DeepSpeedZeroConfig",
    "fp16": "deepspeed.runtime.precision_config:DeepSpeedFP16Config",
    "bf16": "deepspeed.runtime.precision_config:DeepSpeedBF16Config",
    "tensor_parallel": "deepspeed.runtime.tensor_parallel.config:TPTrainingConfig",
    "compile": "deepspeed.compile.config:CompileConfig",
    "comms_logger": "deepspeed.comm.config:CommsLoggerConfig",
    "tensorboard": "deepspeed.monitor.config:TensorBoardConfig",
    "csv_monitor": "deepspeed.monitor.config:CSVConfig",
    "wandb": "deepspeed.monitor.config:WandbConfig",
    "comet": "deepspeed.monitor.config:CometConfig",
    "hybrid_engine": "deepspeed.runtime.config:HybridEngineConfig",
    "timers.throughput": "deepspeed.utils.config:DeepSpeedThroughputTimerConfig",
    "weight_quantization": "deepspeed.inference.config:WeightQuantConfig",
}
# deepspeed.init_inference(config=...): a JSON for inference is validated against this model alone; its
# sections are stored under INFERENCE (a name of ours, not a key of any file).
INFERENCE_MODEL = "deepspeed.inference.config:DeepSpeedInferenceConfig"
INFERENCE = "<inference>"

_ACCELERATE_ENUMS = ("DistributedType", "SageMakerDistributedType", "ComputeEnvironment", "PrecisionType")
_ACCELERATE_CONSTANTS = (
    "FSDP_SHARDING_STRATEGY",
    "FSDP_AUTO_WRAP_POLICY",
    "FSDP_BACKWARD_PREFETCH",
    "FSDP_STATE_DICT_TYPE",
    "DEEPSPEED_MULTINODE_LAUNCHERS",
)
# A DeepSpeed key path as accelerate and transformers spell it in their sources.
_DS_KEY = re.compile(
    r'"((?:zero_optimization|optimizer|scheduler|fp16|bf16)\.[\w.]+'
    r"|train_batch_size|train_micro_batch_size_per_gpu|gradient_accumulation_steps|gradient_clipping)\""
)


def _load(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _unwrap(annotation) -> tuple[object, bool]:
    """(the annotation without ``Optional``, whether ``None`` is accepted)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else object), True  # object: a union of unlike types, "any"
    return annotation, annotation is typing.Any or annotation is object


def _type(annotation, base) -> dict:
    """The JSON-ready type of a pydantic field: ``type`` plus ``choices`` / the nested model class."""
    origin = typing.get_origin(annotation)
    if inspect.isclass(annotation) and issubclass(annotation, base):
        return {"type": "section", "model": annotation}
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return {"type": "enum", "choices": [member.value for member in annotation]}
    if origin is typing.Literal:
        return {"type": "enum", "choices": list(typing.get_args(annotation))}
    simple = {bool: "bool", int: "int", float: "float", str: "str", Path: "str"}
    if annotation in simple:
        return {"type": simple[annotation]}
    if annotation in (list, tuple) or origin in (list, tuple):
        return {"type": "list"}
    if annotation is dict or origin is dict:
        return {"type": "dict"}
    return {"type": "any"}  # unions of unlike types, torch.dtype, object


def _field(name: str, info, base) -> dict:
    annotation, nullable = _unwrap(info.annotation)
    spec = _type(annotation, base)
    if nullable:
        spec["nullable"] = True
    if info.alias and info.alias != name:
        spec["alias"] = info.alias
    bounds = {}
    for item in info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    if bounds:
        spec["bounds"] = bounds
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("deprecated"):
        spec["deprecated"] = {
            "new_param": extra.get("new_param", ""),
            "set_new_param": bool(extra.get("set_new_param", True)),
            "message": extra.get("deprecated_msg", ""),
        }
    return spec


def _sections(path: str, model, base, out: dict) -> str:
    """Add ``model`` (and the models its fields hold) to ``out`` under dotted ``path``; returns its path.

    A model already added (the inference config's ``zero`` is the training ``zero_optimization``) keeps its
    first path, and the field refers to it.
    """
    name = f"{model.__module__}.{model.__qualname__}"
    for known, section in out.items():
        if section["model"] == name:
            return known
    out[path] = {"model": name, "fields": {}}
    for field_name, info in model.model_fields.items():
        spec = _field(field_name, info, base)
        if spec["type"] == "section":
            spec["section"] = _sections(f"{path}.{field_name}", spec.pop("model"), base, out)
        out[path]["fields"][field_name] = spec
    return path


def _names(module, base) -> list[str]:
    return sorted(
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not name.startswith("_")
    )


def derive_deepspeed() -> dict:
    """What DeepSpeed declares about its training and inference configs (imports DeepSpeed, so torch)."""
    import deepspeed
    import torch
    from deepspeed.runtime import config as ds_config
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    sections: dict = {}
    for path, spec in DEEPSPEED_MODELS.items():
        _sections(path, _load(spec), DeepSpeedConfigModel, sections)
    _sections(INFERENCE, _load(INFERENCE_MODEL), DeepSpeedConfigModel, sections)
    optim = torch.optim
    return {
        "version": deepspeed.__version__,
        "sections": sections,
        "inference_root": INFERENCE,
        "removed": {
            "": dict(ds_config._REMOVED_TOP_LEVEL_CONFIG_KEYS),
            "zero_optimization": dict(ds_config._REMOVED_ZERO_CONFIG_KEYS),
        },
        # engine._configure_basic_optimizer: a DeepSpeed name (compared in lower case), else torch.optim.<name>
        "optimizers": {
            "deepspeed": sorted(ds_config.DEEPSPEED_OPTIMIZERS),
            "torch": _names(optim, optim.Optimizer),
        },
        # engine._scheduler_from_config: deepspeed.runtime.lr_schedules.<name>, else torch.optim.lr_scheduler.<name>
        "schedulers": {
            "deepspeed": sorted(lr_schedules.VALID_LR_SCHEDULES),
            "torch": _names(optim.lr_scheduler, optim.lr_scheduler.LRScheduler),
        },
    }


def _dataclass_fields(cls) -> dict:
    """Each field of an accelerate config dataclass: its type and whether ``null`` is what it defaults to."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        annotation, nullable = _unwrap(hints.get(f.name, typing.Any))
        spec = _type(annotation, type(None))
        if nullable or f.default is None:
            spec["nullable"] = True
        if (
            type(f.default) is int
        ):  # the launcher's sentinels (num_processes -1) and defaults (num_machines 1)
            spec["default"] = f.default
        out[f.name] = spec
    return out


def _keys_in(*functions) -> list[str]:
    """DeepSpeed key paths named in the sources of ``functions``."""
    return sorted({key for fn in functions for key in _DS_KEY.findall(inspect.getsource(fn))})


def _trainer_matches(*functions) -> dict[str, list[str]]:
    """DeepSpeed keys HF Trainer compares with its arguments (``fill_match``): key -> the ``args.`` names read."""
    found = {}
    for fn in functions:
        for key, expression in re.findall(
            r'self\.fill_match\(\s*"([\w.]+)",\s*(.*?),\s*"', inspect.getsource(fn), re.S
        ):
            found[key] = sorted(set(re.findall(r"args\.(\w+)", expression)))
    return found


def _config_file_conflicts(plugin) -> dict[str, str]:
    """DeepSpeedPlugin keys accelerate refuses next to a deepspeed_config_file, and their key in the JSON."""
    post_init = inspect.getsource(plugin.__post_init__)
    mapping = dict(re.findall(r'"(\w+)": "((?:zero_optimization\.)?[\w.]+)",', post_init))
    refused = re.findall(
        r'"ACCELERATE_(?:DEEPSPEED_)?(\w+)"', inspect.getsource(plugin._deepspeed_config_checks)
    )
    return {name.lower(): mapping[name.lower()] for name in refused if name.lower() in mapping}


def derive_accelerate() -> dict:
    """What accelerate (and HF Trainer, through it) declares about its config and the DeepSpeed JSON."""
    import accelerate
    from accelerate import Accelerator
    from accelerate.commands.config import config_args
    from accelerate.utils import DeepSpeedPlugin, DynamoBackend, constants
    from accelerate.utils import dataclasses as acc_dataclasses
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    enums = {name: [m.value for m in getattr(acc_dataclasses, name)] for name in _ACCELERATE_ENUMS}
    enums["DynamoBackend"] = [m.value for m in DynamoBackend]
    return {
        "version": accelerate.__version__,
        "enums": enums,
        "constants": {name: list(getattr(constants, name)) for name in _ACCELERATE_CONSTANTS},
        "config_fields": {
            name: _dataclass_fields(getattr(config_args, name))
            for name in ("ClusterConfig", "SageMakerConfig")
        },
        "config_file_conflicts": _config_file_conflicts(DeepSpeedPlugin),
        "auto_filled": {
            "accelerate": _keys_in(
                Accelerator._prepare_deepspeed,
                DeepSpeedPlugin.__post_init__,
                DeepSpeedPlugin.set_mixed_precision,
            ),
            "transformers": _keys_in(
                HfTrainerDeepSpeedConfig.trainer_config_process,
                HfTrainerDeepSpeedConfig.trainer_config_finalize,
            ),
        },
        "trainer_matches": _trainer_matches(
            HfTrainerDeepSpeedConfig.trainer_config_process, HfTrainerDeepSpeedConfig.trainer_config_finalize
        ),
    }


def derive() -> dict:
    """Everything ``derived.py`` serves, read from the installed libraries."""
    return {"deepspeed": derive_deepspeed(), "accelerate": derive_accelerate()}


def render(data: dict) -> str:
    """The data file's text: stable (sorted keys) so that a regeneration shows as a small diff."""
    return json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"


def main() -> None:
    """Regenerate the data file (``make schema``)."""
    DATA_FILE.parent.mkdir(exist_ok=True)
    DATA_FILE.write_text(render(derive()), encoding="utf-8")
    print(f"wrote {DATA_FILE}")


if __name__ == "__main__":
    main()
