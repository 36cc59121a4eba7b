"""Safe, bounded loading of accelerate configs and DeepSpeed JSON files, and the shipped configs by name."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from disttune.config.bounded import MAX_BYTES, Parsed, Refused, looks_like_json, parse_json, parse_yaml
from disttune.errors import UserError

SHIPPED_DIR = "accelerate_configs"


def _read_text(path: Path, what: str) -> str:
    try:
        with open(
            path, "rb"
        ) as handle:  # at most one byte past the limit: /dev/zero or a huge file stops here
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise UserError(
                f"{path}: refused: larger than a config can be ({MAX_BYTES // 1024} KiB); "
                "is this the right file?"
            )
        return raw.decode("utf-8").replace("\r\n", "\n")
    except FileNotFoundError:
        raise UserError(
            f"{path}: {what} not found. Check the path (it is read relative to {Path.cwd()})."
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what}. Pass the file inside it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: cannot read the {what} ({exc}). Check its permissions and encoding."
        ) from None


def _yaml_error(where: str, exc: yaml.YAMLError) -> UserError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{where}:{mark.line + 1}" if mark is not None else where
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return UserError(
        f"{where}: not valid YAML ({problem}). Fix the indentation or quoting on that line "
        "(keys are `name: value`, nested keys indented by two spaces)."
    )


def _json_error(where: str, exc: json.JSONDecodeError) -> UserError:
    return UserError(
        f"{where}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}). JSON needs double quotes, "
        "no trailing commas and no comments."
    )


def parse_config_text(text: str, where: str, syntax: str = "any") -> Parsed:
    """Parse config text, bounded (``bounded.py``): JSON when it reads as JSON, else YAML.

    ``syntax`` ``"json"`` accepts only JSON (DeepSpeed reads its config with ``json.load``), ``"yaml"`` only
    YAML; ``"any"`` decides from the content. Raises ``UserError`` (what, where, fix) for text that is
    refused or does not parse.
    """
    try:
        if syntax == "json":
            return parse_json(text, where)
        if syntax == "any" and looks_like_json(text):
            try:
                return parse_json(text, where)
            except json.JSONDecodeError as exc:
                json_error = exc
            try:
                parsed = parse_yaml(text, where)  # YAML flow style also starts with { or [
            except yaml.YAMLError:
                raise _json_error(where, json_error) from None
            return dataclasses.replace(parsed, json_error=str(_json_error(where, json_error)))
        return parse_yaml(text, where)
    except Refused as exc:
        raise UserError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _json_error(where, exc) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None


def read_config(path, what: str = "config", syntax: str = "any") -> Parsed:
    """Read and parse one config file (bounded); ``UserError`` when it cannot be read."""
    path = Path(path)
    return parse_config_text(_read_text(path, what), str(path), syntax)


def load_mapping(path, what: str = "config", syntax: str = "any") -> dict:
    """The mapping in the file at ``path`` (bounded); ``UserError`` (file, line, fix) otherwise."""
    data = read_config(path, what, syntax).data
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise UserError(f"{path}: the {what} is {kind}; it must be a mapping of `name: value` keys.")
    return data


def load_accelerate_config(path) -> dict:
    """The accelerate config at ``path`` (YAML, or JSON as accelerate also accepts), as a dict.

    Raises ``UserError`` (file, line, fix) when the file is missing, does not parse, is refused (too large,
    too deep, alias bombs) or is not a mapping.
    """
    data = read_config(path, "accelerate config").data
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise UserError(
            f"{path}: the file is {kind}. An accelerate config is a mapping of keys such as "
            "`distributed_type: MULTI_GPU`; start from `disttune config new` or a shipped config."
        )
    return data


def load_deepspeed_json(path) -> dict:
    """The DeepSpeed JSON at ``path`` as a dict; ``UserError`` (file, line, fix) if it cannot be used."""
    data = read_config(path, "DeepSpeed config", syntax="json").data
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a DeepSpeed config is a JSON object ({{...}}), not a {type(data).__name__}."
        )
    return data


@dataclass(frozen=True)
class Resolved:
    """Where a ``deepspeed_config_file`` value points, as ``accelerate launch`` run from ``cwd`` opens it.

    Attributes:
        path: the file found (where the launch opens it, or where it was found instead), or ``None``.
        how: ``"absolute"``, ``"cwd"`` (found where the launch opens it), ``"elsewhere"`` (only relative to
            another folder: ``base``), ``"tilde"`` (found only once ``~`` is expanded, which nothing at launch
            does) or ``"missing"``.
        tried: the distinct paths a message should name (the one the launch opens first).
        base: the folder to launch from, when ``how`` is ``"elsewhere"``.
    """

    path: Path | None
    how: str
    tried: tuple[Path, ...]
    base: Path | None = None


def _ancestors(folder: Path) -> list[Path]:
    folder = Path(os.path.abspath(folder))
    return [folder, *folder.parents]


def resolve_deepspeed_config_file(value: str, yaml_path, cwd=None) -> Resolved:
    """Find ``deepspeed_config.deepspeed_config_file`` as the launch will, and where else it is, if not there.

    accelerate hands the string to the training processes unchanged (ACCELERATE_DEEPSPEED_CONFIG_FILE), and
    ``HfDeepSpeedConfig`` opens it as written: relative to the directory you launch from, without expanding
    ``~``. When it is not there, the YAML's folder and every folder above it (the repository root, where a
    repository's scripts launch from), then every folder above ``cwd``, are tried, nearest first.
    """
    raw = Path(str(value))
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if str(value).startswith("~"):
        expanded = Path(os.path.expanduser(str(value)))
        return Resolved(expanded if expanded.is_file() else None, "tilde", (expanded,))
    if raw.is_absolute():
        return Resolved(raw if raw.is_file() else None, "absolute" if raw.is_file() else "missing", (raw,))
    first = Path(os.path.abspath(cwd / raw))
    if first.is_file():
        return Resolved(first, "cwd", (first,))
    yaml_dir = Path(os.path.abspath(Path(yaml_path).parent))
    tried = (first,) if yaml_dir / raw == first else (first, yaml_dir / raw)
    bases = list(dict.fromkeys(_ancestors(yaml_dir) + _ancestors(cwd)))
    for base in bases:
        if base != Path(os.path.abspath(cwd)) and (base / raw).is_file():
            return Resolved(Path(os.path.normpath(base / raw)), "elsewhere", tried, base)
    return Resolved(None, "missing", tried)


def is_repository_root(folder: Path) -> bool:
    """Whether ``folder`` holds a ``.git`` (folder or file): a repository's root."""
    return (Path(folder) / ".git").exists()


def shipped_config_names() -> list[str]:
    """Names (without ``.yaml``) of the accelerate configs shipped inside the package."""
    folder = resources.files("disttune") / SHIPPED_DIR
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def shipped_config_path(name: str) -> Path:
    """Path of the shipped config ``name`` (``"deepspeed_zero3"`` or ``"deepspeed_zero3.yaml"``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    names = shipped_config_names()
    if stem not in names:
        raise UserError(f"no shipped config named {name!r}. Shipped configs: {', '.join(names)}.")
    return Path(str(resources.files("disttune") / SHIPPED_DIR / f"{stem}.yaml"))
