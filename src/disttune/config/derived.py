"""What the installed DeepSpeed and accelerate declare about their configs, as ``derive.py`` saved it.

Read from the package's ``data/derived_schema.json`` (json, no import of either library), so that ``disttune
check`` answers instantly. ``make schema`` regenerates the file; a test regenerates it and fails on any
difference from the installed versions.
"""

from __future__ import annotations

import json
from importlib import resources

_TEXT = (resources.files("disttune.config") / "data" / "derived_schema.json").read_text(encoding="utf-8")
DATA: dict = json.loads(_TEXT)

DEEPSPEED: dict = DATA["deepspeed"]
ACCELERATE: dict = DATA["accelerate"]
DEEPSPEED_VERSION: str = DEEPSPEED["version"]
# The name under which the sections of DeepSpeed's inference config model are filed (not a key of any file).
INFERENCE: str = DEEPSPEED["inference_root"]
ACCELERATE_VERSION: str = ACCELERATE["version"]

# The key paths accelerate or HF Trainer fill in when a DeepSpeed JSON says "auto" there.
AUTO_FILLED: frozenset[str] = frozenset(
    ACCELERATE["auto_filled"]["accelerate"] + ACCELERATE["auto_filled"]["transformers"]
)


def section_fields(path: str) -> dict[str, dict]:
    """The fields DeepSpeed's model for section ``path`` declares (``zero_optimization.offload_param``)."""
    return DEEPSPEED["sections"][path]["fields"]


def section_model(path: str) -> str:
    """The short name of DeepSpeed's model for section ``path`` (``DeepSpeedZeroConfig``)."""
    return DEEPSPEED["sections"][path]["model"].rsplit(".", 1)[-1]


def accelerate_values(name: str) -> tuple:
    """The values of one of accelerate's enums (``DynamoBackend``) or constants (``FSDP_STATE_DICT_TYPE``)."""
    found = ACCELERATE["enums"].get(name)
    return tuple(found if found is not None else ACCELERATE["constants"][name])
