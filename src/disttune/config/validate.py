"""Check a loaded mapping against a ``Section`` of the schema: unknown keys, types and allowed values.

Every problem becomes a ``Finding``; nothing stops at the first one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from disttune.config.findings import Finding, error, warning
from disttune.config.renamed import Renamed
from disttune.config.schema import FALSE_STRINGS, TRUE_STRINGS, Key, Section

# An unknown key this close to a known key that the section lacks is a typo: the message says that the
# setting the user meant silently keeps its default.
TYPO_RATIO = 0.85

_KIND_WORDS = {
    "bool": "true or false",
    "boolish": "true or false",
    "int": "a whole number",
    "intish": "a whole number",
    "float": "a number",
    "floatish": "a number",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
    "section": "a mapping",
}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_ok(value: object, key: Key) -> bool:
    kind = key.kind
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "boolish":
        if isinstance(value, bool) or value in (0, 1):
            return True
        return isinstance(value, str) and value.lower() in TRUE_STRINGS + FALSE_STRINGS
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "intish":
        if isinstance(value, float):
            return value.is_integer()
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()
        )
    if kind == "float":
        return _is_number(value)
    if kind == "floatish":
        if _is_number(value):
            return True
        try:
            float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return isinstance(value, str)
    if kind == "str":
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if kind == "enum":
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    return isinstance(value, dict)  # dict, section


def _fold(value: object, how: str) -> str:
    text = str(value)
    return text.upper() if how == "upper" else text.lower() if how == "lower" else text


def check_value(
    value: object, key: Key, file: str, dotted: str, context: Context | None = None
) -> list[Finding]:
    """Findings for one value against its spec (``None`` is fine where the consumer accepts null)."""
    if value is None:
        if key.nullable:
            return []
        return [
            error(
                file,
                dotted,
                value,
                f"null is not accepted here{_by(key)}: it expects {_KIND_WORDS.get(key.kind, 'a value')}",
                f"write {_KIND_WORDS.get(key.kind, 'a value')}, or remove {dotted.rsplit('.', 1)[-1]} so that its "
                "default applies",
            )
        ]
    if value == "auto":
        if key.auto or key.kind == "any" or "auto" in key.choices:
            return []
        return [_not_auto(key, file, dotted)]
    if not _type_ok(value, key):
        want = _KIND_WORDS.get(key.kind, "one of " + ", ".join(map(str, key.choices)))
        hint = ""
        if isinstance(value, str) and key.kind in ("bool", "int", "float"):
            hint = " (a quoted value is a string)"
        if isinstance(value, bool) and key.kind not in ("bool", "boolish"):
            hint = " (YAML reads unquoted yes/no/true/false/on/off as booleans)"
        return [
            error(
                file,
                dotted,
                value,
                f"expected {want}, got {type(value).__name__} {value!r}{hint}",
                f"write {dotted.rsplit('.', 1)[-1]}: <{want}>"
                + (", without quotes" if isinstance(value, str) else ""),
            )
        ]
    if key.choices:
        folded = _fold(value, key.fold) if key.kind == "enum" else value
        if isinstance(folded, str) and key.kind != "enum" and folded.strip().lstrip("-").isdigit():
            folded = int(folded)
        if isinstance(folded, float) and folded.is_integer():
            folded = int(folded)
        if folded not in key.choices:
            names = [c for c in key.choices if not (isinstance(c, str) and c.isdigit())]
            close = difflib.get_close_matches(str(folded), [str(c) for c in names], n=1)
            fix = f"use one of: {', '.join(map(str, names))}" + (
                f" (did you mean {close[0]}?)" if close else ""
            )
            return [error(file, dotted, value, f"{value!r} is not an allowed value{_by(key)}", fix)]
    outside = _outside(value, key, file, dotted)
    if outside:
        return outside
    if key.kind == "section" and key.section is not None:
        return check_section(value, key.section, file, dotted, context)  # type: ignore[arg-type]
    return []


def _by(key: Key) -> str:
    return f" ({key.origin} refuses it)" if key.origin else ""


def _not_auto(key: Key, file: str, dotted: str) -> Finding:
    if key.origin.startswith("DeepSpeed"):
        message = (
            "'auto' is filled in by accelerate / HF Trainer for some keys, not this one: under accelerate the "
            f"launch stops ('{dotted}' not found in kwargs), and DeepSpeed alone drops it and uses its default"
        )
    else:
        message = "'auto' is not allowed here: neither accelerate nor HF Trainer fills this key in"
    return error(file, dotted, "auto", message, "write a concrete value (or remove the key for the default)")


# pydantic's names for the limits it enforces, and how a message says each.
_LIMITS = {
    "ge": (float.__ge__, "at least"),
    "gt": (float.__gt__, "above"),
    "le": (float.__le__, "at most"),
    "lt": (float.__lt__, "below"),
}


def _outside(value: object, key: Key, file: str, dotted: str) -> list[Finding]:
    """An error when a number lies outside the limits its consumer enforces (``minimum``, ``bounds``)."""
    number = _number(value)
    if number is None:
        return []
    name = dotted.rsplit(".", 1)[-1]
    limits = ((("ge", key.minimum),) if key.minimum is not None else ()) + tuple(key.bounds)
    for op, limit in limits:
        within, words = _LIMITS[op]
        if not within(number, float(limit)):
            why = key.why_minimum if op == "ge" and limit == key.minimum and key.why_minimum else _by(key)
            return [
                error(
                    file,
                    dotted,
                    value,
                    f"must be {words} {limit:g}{why}",
                    f"set {name} to a value {words} {limit:g}",
                )
            ]
    return []


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Context:
    """What a check of one file knows beyond the schema, attached to findings where they are made.

    Attributes:
        renamed: dotted key path -> ``Renamed`` (renamed.py) for this kind of file.
        hints: dotted key path of an unknown key -> (what to add to the message, the fix).
        removed: dotted key path -> why the consumer now refuses the key outright (its own message).
    """

    renamed: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)


def check_section(
    data: dict, section: Section, file: str, prefix: str = "", context: Context | None = None
) -> list[Finding]:
    """Findings for every key of ``data``: unknown keys (with a "did you mean"), renamed keys, types, values."""
    context = context or Context()
    findings: list[Finding] = []
    known = list(section.keys)
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else str(name)
        name = str(name)
        if section.skip_underscore and name.startswith("_"):
            continue
        full = name if not section.prefix or name.startswith(section.prefix) else section.prefix + name
        if dotted in context.removed:
            findings.append(error(file, dotted, value, context.removed[dotted], "remove it"))
            continue
        renamed = context.renamed.get(f"{prefix}.{full}" if prefix else full)
        if renamed is not None:
            findings.append(_renamed(renamed, name, value, file, dotted))
            if not renamed.read:
                continue
        key = section.lookup(name)
        if key is not None:
            findings += check_value(value, key, file, dotted, context)
            continue
        if section.unknown == "open":
            continue
        findings.append(_unknown(name, value, data, section, file, dotted, known, context.hints.get(dotted)))
    return findings


def _renamed(renamed: Renamed, name: str, value: object, file: str, dotted: str) -> Finding:
    fix = f"rename it to {renamed.new}"
    if renamed.read:
        return warning(
            file,
            dotted,
            value,
            f"{name!r} was renamed to {renamed.new!r} in {renamed.since}; the old "
            "name still works but is deprecated",
            fix,
        )
    return error(
        file,
        dotted,
        value,
        f"{name!r} was renamed to {renamed.new!r} in {renamed.since} and is no longer "
        "read, so the setting has no effect",
        fix,
    )


def _unknown(name, value, data, section, file, dotted, known, hint) -> Finding:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    message = f"unknown key {name!r}: {section.unknown_why}"
    if match:
        ratio = difflib.SequenceMatcher(None, name, match[0]).ratio()
        present = match[0] in data or (section.prefix and match[0].removeprefix(section.prefix) in data)
        if ratio >= TYPO_RATIO and not present:
            message += f", and {match[0]!r}, which it looks like, keeps its default"
        fix = f"did you mean {match[0]!r}? Rename the key (or remove it)"
    else:
        fix = "remove it (check the spelling against the documentation)"
    if hint:
        message, fix = message + hint[0], hint[1]
    # An unknown key is either refused (the run fails) or silently ignored (the run is not as written):
    # an error either way.
    return error(file, dotted, value, message, fix)
