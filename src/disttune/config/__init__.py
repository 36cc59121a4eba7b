"""The config model: load, validate and write accelerate configs and the DeepSpeed JSON they reference.

Imports neither torch nor deepspeed nor transformers, so ``disttune check`` answers instantly: what DeepSpeed
and accelerate declare about their configs is read from them at build time by ``derive.py`` (``make schema``)
into ``data/derived_schema.json``, which ``derived.py`` loads; ``schema.py`` and ``deepspeed_schema.py`` build
the typed model from it, with what is ours on top (a test regenerates the data and compares). Every config
is read through ``bounded.py`` (size, depth, alias expansion and time bounded).
"""

from disttune.config.check import CheckReport, check_config, check_files
from disttune.config.findings import Finding
from disttune.config.load import (
    load_accelerate_config,
    load_deepspeed_json,
    resolve_deepspeed_config_file,
    shipped_config_names,
    shipped_config_path,
)

__all__ = [
    "CheckReport",
    "Finding",
    "check_config",
    "check_files",
    "load_accelerate_config",
    "load_deepspeed_json",
    "resolve_deepspeed_config_file",
    "shipped_config_names",
    "shipped_config_path",
]
