"""``check_files``: every problem of accelerate configs (and the DeepSpeed JSON they name), at once.

Each file's kind (accelerate config or DeepSpeed config) is decided from its keys, not its extension:
DeepSpeed JSON is published as ``.conf`` and ``.yaml``, and accelerate reads a ``.json`` config too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from disttune.config import renamed
from disttune.config.deepspeed_rules import check_deepspeed_rules, json_precision
from disttune.config.deepspeed_schema import DEEPSPEED_JSON
from disttune.config.findings import ERROR, Finding, error
from disttune.config.load import read_config, resolve_deepspeed_config_file
from disttune.config.rules import (
    Accelerate,
    notes_processes,
    rule_deepspeed,
    rule_distributed_type,
    rule_gpu_ids,
    rule_ignored_sections,
    rule_mixed_precision,
    rule_processes,
)
from disttune.config.rules_fsdp import rule_fsdp
from disttune.config.schema import CLUSTER_CONFIG, SAGEMAKER_CONFIG
from disttune.config.script_args import Setting, check_precision_args, check_script_args, parse_script_args
from disttune.config.validate import Context, check_section
from disttune.errors import UserError

ACCELERATE, DEEPSPEED = "accelerate config", "DeepSpeed config"


@dataclass
class CheckReport:
    """What ``disttune check`` found: the files read, the findings, notes (facts, not problems), and the configs.

    ``configs`` maps each accelerate config that loaded to its mapping, so that callers (doctor) use the
    same reading instead of loading the file again.
    """

    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    configs: dict[str, dict] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(f.severity == ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return len(self.findings) - self.errors


def _display(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it."""
    path = Path(os.path.normpath(path))
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def config_kind(data: dict, path: Path) -> tuple[str, str | None]:
    """(kind, note): ``ACCELERATE`` or ``DEEPSPEED`` from the top-level keys; the note says what was assumed.

    Keys known to only one of the two schemas vote; a tie (no known key, or as many of each) falls back on
    the extension (``.json``: DeepSpeed, anything else: accelerate) and says so.
    """
    names = {str(k) for k in data}
    ours = {k for k in names if k in CLUSTER_CONFIG.keys or k in SAGEMAKER_CONFIG.keys}
    theirs = {k for k in names if k in DEEPSPEED_JSON.keys}
    accelerate, deepspeed = len(ours - theirs), len(theirs - ours)
    # Keys that only ever head one kind decide alone (an accelerate config with DeepSpeed keys misplaced at
    # its top level is still an accelerate config).
    if names & {"distributed_type", "compute_environment"}:
        accelerate, deepspeed = 1, 0
    elif names & {"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size"}:
        accelerate, deepspeed = 0, 1
    by_extension = DEEPSPEED if path.suffix.lower() == ".json" else ACCELERATE
    if accelerate == deepspeed:
        article = "an" if by_extension == ACCELERATE else "a"
        return by_extension, (
            f"{path}: read as {article} {by_extension} (assumed from the "
            f"{path.suffix or 'missing'} extension: its keys do not tell)"
        )
    kind = ACCELERATE if accelerate > deepspeed else DEEPSPEED
    if kind != by_extension:
        article = "an" if kind == ACCELERATE else "a"
        return (
            kind,
            f"{path}: read as {article} {kind} (its keys are {kind.split()[0]}'s), whatever the extension",
        )
    return kind, None


def check_files(
    paths, num_processes: int | None = None, script_args: list[str] | None = None, cwd=None
) -> CheckReport:
    """Check each path (accelerate config, or a DeepSpeed JSON given directly) and collect everything."""
    report = CheckReport()
    parsed_args = parse_script_args(script_args) if script_args else None
    json_only: dict[Path, str] = {}
    for path in paths:
        path = Path(path)
        data = _load(report, path, str(path), json_only=json_only)
        if data is None:
            continue
        kind, note = config_kind(data, path)
        if note:
            report.notes.append(note)
        if path in json_only and (kind == DEEPSPEED or path.suffix.lower() == ".json"):
            # DeepSpeed reads its config with json.load, and accelerate reads a .json config the same way.
            report.findings.append(error(str(path), "", None, json_only[path], _UNLOADABLE_FIX))
            continue
        if kind == DEEPSPEED:
            _check_json_file(report, data, str(path), num_processes, parsed_args)
        else:
            report.configs[str(path)] = data
            _check_yaml_file(report, data, path, num_processes, parsed_args, cwd)
    return report


def check_config(
    path, num_processes: int | None = None, script_args: list[str] | None = None
) -> list[Finding]:
    """All findings for one accelerate config (with the DeepSpeed JSON it references) or one DeepSpeed JSON."""
    return check_files([path], num_processes, script_args).findings


_UNLOADABLE_FIX = "fix the file so that it loads, then run disttune check again"


def _load(report: CheckReport, path: Path, file: str, syntax: str = "any", json_only=None) -> dict | None:
    """Read one file for the report: its mapping, or None with the reason recorded as a finding.

    ``json_only`` collects, per path, why text that reads as YAML is not the JSON it looks like.
    """
    report.files.append(file)
    try:
        parsed = read_config(path, "config", syntax)
    except UserError as exc:
        report.findings.append(error(file, "", None, str(exc), _UNLOADABLE_FIX))
        return None
    if parsed.json_error and json_only is not None:
        json_only[path] = parsed.json_error
    if not isinstance(parsed.data, dict):
        kind = "empty" if parsed.data is None else f"a {type(parsed.data).__name__}, not a mapping"
        report.findings.append(
            error(
                file,
                "",
                None,
                f"{file}: the file is {kind}",
                "a config is a mapping of keys such as `distributed_type: MULTI_GPU` (accelerate) "
                'or `"zero_optimization": {...}` (DeepSpeed); start from `disttune config new`',
            )
        )
        return None
    report.findings += [
        error(
            file,
            key,
            None,
            f"'{key}' is written twice in the same mapping"
            + (f" (again on line {line})" if line else "")
            + "; only the last value is used, the other is silently "
            "ignored",
            "keep only the one you meant",
        )
        for key, line in parsed.repeated
    ]
    return parsed.data


# Hints attached to an unknown key where the finding is made (validate.Context).
_COMPILE_HINT = (
    "",
    "remove it: DeepSpeed 0.19.8 has no compile.disable/backend (its compile section holds DeepCompile settings); "
    "to use torch.compile call engine.compile() or your trainer's torch_compile option",
)
DEEPSPEED_CONTEXT = Context(
    renamed.DEEPSPEED, {"compile.disable": _COMPILE_HINT, "compile.backend": _COMPILE_HINT}
)
ACCELERATE_CONTEXT = Context(
    renamed.ACCELERATE,
    {
        f"deepspeed_config.{key}": (
            f" ({key!r} is a DeepSpeed JSON key, which accelerate does not pass on from here)",
            "put it in a DeepSpeed JSON file and point deepspeed_config.deepspeed_config_file at it, or remove it",
        )
        for key in DEEPSPEED_JSON.keys
    },
)


def _check_json(report: CheckReport, data: dict, file: str, world: int | None) -> None:
    report.findings += check_section(data, DEEPSPEED_JSON, file, context=DEEPSPEED_CONTEXT)
    report.findings += check_deepspeed_rules(data, file, world)


def _json_settings(data: dict, file: str) -> dict[str, Setting]:
    settings = {}
    for name, key in (
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("max_grad_norm", "gradient_clipping"),
        ("per_device_train_batch_size", "train_micro_batch_size_per_gpu"),
    ):
        if data.get(key) not in (None, "auto"):
            settings[name] = Setting(data[key], file, key)
    return settings


def _json_precision(data: dict, file: str) -> list[Setting]:
    precision, key = json_precision(data)
    return [Setting(precision, file, key)] if precision is not None else []


def _check_json_file(report: CheckReport, data: dict, file: str, world: int | None, args) -> None:
    _check_json(report, data, file, world)
    if args is not None:
        report.findings += check_script_args(args, _json_settings(data, file))
        report.findings += check_precision_args(args, _json_precision(data, file))


def _check_yaml_file(report: CheckReport, data: dict, path: Path, num_processes, args, cwd) -> None:
    y = Accelerate(data, str(path), num_processes)
    schema = SAGEMAKER_CONFIG if y.sagemaker else CLUSTER_CONFIG
    report.findings += check_section(data, schema, y.file, context=ACCELERATE_CONTEXT)
    for rule in (
        rule_distributed_type,
        rule_mixed_precision,
        rule_processes,
        rule_gpu_ids,
        rule_ignored_sections,
    ):
        report.findings += rule(y)
    report.findings += rule_fsdp(y)
    report.notes += notes_processes(y)

    ds_data, ds_file = _referenced_json(report, y, path, cwd)
    report.findings += rule_deepspeed(y, ds_data, ds_file)
    if ds_data is not None:
        _check_json(report, ds_data, ds_file, y.world)
    if args is None:
        return
    if y.dtype == "DEEPSPEED":
        settings = _json_settings(ds_data, ds_file) if ds_data is not None else _yaml_settings(y)
        report.findings += check_script_args(args, settings)
    sources = _json_precision(ds_data, ds_file) if ds_data is not None else []
    mp = y.data.get("mixed_precision")
    if isinstance(mp, str):
        sources.insert(0, Setting(mp.lower(), y.file, "mixed_precision"))
    report.findings += check_precision_args(args, sources)


def _yaml_settings(y: Accelerate) -> dict[str, Setting]:
    settings = {}
    for name, key in (
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("max_grad_norm", "gradient_clipping"),
    ):
        if y.ds.get(key) not in (None, "auto"):
            settings[name] = Setting(y.ds[key], y.file, f"deepspeed_config.{key}")
    return settings


def _referenced_json(report: CheckReport, y: Accelerate, yaml_path: Path, cwd) -> tuple[dict | None, str]:
    value = y.ds.get("deepspeed_config_file")
    if not value or y.dtype != "DEEPSPEED":
        return None, ""
    key = "deepspeed_config.deepspeed_config_file"
    found = resolve_deepspeed_config_file(str(value), yaml_path, cwd)
    if found.path is None:
        tried = " and ".join(_display(p) for p in found.tried)
        report.findings.append(
            error(
                y.file,
                key,
                value,
                f"the DeepSpeed config file does not exist (looked at {tried})",
                "fix the path; accelerate opens it relative to the directory you launch from, "
                "so an absolute path is the safest",
            )
        )
        return None, ""
    ds_file = _display(found.path)
    where = {
        "absolute": "an absolute path",
        "cwd": "relative to the current directory, as accelerate opens it",
        "yaml_dir": "relative to the YAML's folder; accelerate opens it relative to the directory you launch "
        f"from, so launch from {_display(yaml_path.parent)} or make the path absolute",
    }[found.how]
    report.notes.append(f"{y.file}: {key} {value!r} -> {ds_file} ({where})")
    ds_data = _load(report, found.path, ds_file, syntax="json")  # DeepSpeed reads it with json.load
    return (ds_data, ds_file) if ds_data is not None else (None, "")


__all__ = ["CheckReport", "check_config", "check_files", "config_kind"]
