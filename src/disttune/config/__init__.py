"""The config model: load, validate and write accelerate configs and the DeepSpeed JSON they reference.

Imports neither torch nor deepspeed nor transformers: the schema is written down as data (``schema.py``,
``deepspeed_schema.py``; a test compares it with the installed packages), so ``disttune check`` answers
instantly. Every config is read through ``bounded.py`` (size, depth, alias expansion and time bounded).
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
