"""Keys written twice in one mapping: YAML and JSON loaders silently keep the last value.

A config with ``zero_stage: 2`` and, further down, ``zero_stage: 3`` runs with 3 while the reader of the
first line believes 2. These functions find such keys without building anything but the parse tree.
"""

from __future__ import annotations

import json

import yaml


def duplicate_yaml_keys(text: str) -> list[tuple[str, int]]:
    """``(dotted key path, 1-based line of the repeated key)`` for every key repeated in a YAML mapping.

    Uses ``yaml.compose`` with the safe loader (nodes only, no object construction). Returns ``[]`` for
    text that does not parse: the loader reports that problem itself.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    found: list[tuple[str, int]] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                path = f"{prefix}.{key}" if prefix else key
                if key in seen:
                    found.append((path, key_node.start_mark.line + 1))
                seen.add(key)
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{prefix}[{index}]")

    walk(root, "")
    return found


class _Object(dict):
    """A JSON object that remembers which of its keys were written more than once."""

    repeated: list[str]


def duplicate_json_keys(text: str) -> list[str]:
    """Dotted paths of keys repeated inside one JSON object (``[]`` for invalid JSON)."""

    def pairs_hook(pairs):
        obj = _Object(pairs)
        keys = [key for key, _ in pairs]
        obj.repeated = [key for index, key in enumerate(keys) if key in keys[:index]]
        return obj

    try:
        root = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError:
        return []
    found: list[str] = []

    def walk(value, prefix: str) -> None:
        if isinstance(value, _Object):
            found.extend(f"{prefix}.{key}" if prefix else key for key in value.repeated)
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else key)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{prefix}[{index}]")

    walk(root, "")
    return found
