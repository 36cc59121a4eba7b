"""``check_config``: every problem of an accelerate YAML (and the DeepSpeed JSON it names), at once."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from disttune.config.deepspeed_rules import check_deepspeed_rules, json_precision, json_stage
from disttune.config.deepspeed_schema import DEEPSPEED_JSON
from disttune.config.duplicates import duplicate_json_keys, duplicate_yaml_keys
from disttune.config.findings import ERROR, Finding, error
from disttune.config.load import load_accelerate_config, load_deepspeed_json, resolve_deepspeed_config_file
from disttune.config.rules import (
    Yaml,
    rule_deepspeed,
    rule_distributed_type,
    rule_gpu_ids,
    rule_ignored_sections,
    rule_mixed_precision,
    rule_processes,
)
from disttune.config.rules_fsdp import rule_fsdp
from disttune.config.schema import CLUSTER_CONFIG, SAGEMAKER_CONFIG
from disttune.config.script_args import Setting, check_script_args, parse_script_args
from disttune.config.validate import check_section
from disttune.errors import UserError


@dataclass
class CheckReport:
    """What ``disttune check`` found: the files read, the findings, and notes (facts, not problems)."""

    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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


def _unloadable(file: str, exc: UserError) -> Finding:
    return error(file, "", None, str(exc), "fix the file so that it loads, then run disttune check again")


def check_files(
    paths, num_processes: int | None = None, script_args: list[str] | None = None, cwd=None
) -> CheckReport:
    """Check each path (accelerate YAML, or a DeepSpeed JSON given directly) and collect everything."""
    report = CheckReport()
    for path in paths:
        if str(path).endswith(".json"):
            _check_json_file(report, Path(path), num_processes, script_args)
        else:
            _check_yaml_file(report, Path(path), num_processes, script_args, cwd)
    return report


def check_config(path, num_processes: int | None = None, script_args: list[str] | None = None) -> list[Finding]:
    """All findings for one accelerate YAML (with the DeepSpeed JSON it references) or one DeepSpeed JSON."""
    return check_files([path], num_processes, script_args).findings


# Advice for keys DeepSpeed 0.19.8 rejects but older releases (and published configs) used.
_JSON_HINTS = {
    "compile.disable": "remove it: DeepSpeed 0.19.8 has no compile.disable/backend (its compile section holds DeepCompile "
    "settings); to use torch.compile call engine.compile() or your trainer's torch_compile option",
}
_JSON_HINTS["compile.backend"] = _JSON_HINTS["compile.disable"]


def _duplicates(path: Path, file: str) -> list[Finding]:
    """One error per key written twice in one mapping of ``path``: the loader silently keeps the last value."""
    text = path.read_text(encoding="utf-8")  # already read once by the loader, so it is readable
    if path.suffix == ".json":
        repeated = [(key, "") for key in duplicate_json_keys(text)]
    else:
        repeated = [(key, f" (again on line {line})") for key, line in duplicate_yaml_keys(text)]
    return [
        error(file, key, None, f"'{key}' is written twice in the same mapping{where}; only the last value is "
              "used, the other is silently ignored", "keep only the one you meant")
        for key, where in repeated
    ]


def _check_json(report: CheckReport, data: dict, file: str, world: int | None) -> None:
    report.findings += [
        dataclasses.replace(f, fix=_JSON_HINTS[f.key]) if f.key in _JSON_HINTS else f
        for f in check_section(data, DEEPSPEED_JSON, file)
    ]
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
    precision, key = json_precision(data)
    if precision is not None:
        settings["mixed_precision"] = Setting(precision, file, key)
    return settings


def _load(report: CheckReport, path: Path, file: str, loader) -> dict | None:
    """Read one file for the report: its mapping, or None with the reason recorded as a finding."""
    report.files.append(file)
    try:
        data = loader(path)
    except UserError as exc:
        report.findings.append(_unloadable(file, exc))
        return None
    report.findings += _duplicates(path, file)
    return data


def _check_json_file(report: CheckReport, path: Path, world: int | None, script_args) -> None:
    file = str(path)
    data = _load(report, path, file, load_deepspeed_json)
    if data is None:
        return
    _check_json(report, data, file, world)
    if script_args:
        report.findings += check_script_args(parse_script_args(script_args), _json_settings(data, file), True)


def _check_yaml_file(report: CheckReport, path: Path, num_processes, script_args, cwd) -> None:
    file = str(path)
    data = _load(report, path, file, load_accelerate_config)
    if data is None:
        return
    y = Yaml(data, file, num_processes)
    schema = SAGEMAKER_CONFIG if y.sagemaker else CLUSTER_CONFIG
    report.findings += [_hint_deepspeed_key(f) for f in check_section(data, schema, file)]
    for rule in (rule_distributed_type, rule_mixed_precision, rule_processes, rule_gpu_ids, rule_ignored_sections):
        report.findings += rule(y)
    report.findings += rule_fsdp(y)

    ds_data, ds_file = _referenced_json(report, y, path, cwd)
    report.findings += rule_deepspeed(y, json_stage(ds_data) if ds_data is not None else None)
    if ds_data is not None:
        _check_json(report, ds_data, ds_file, y.world)
        if y.data.get("mixed_precision") is not None:
            _precision_vs_json(report, y, ds_data, ds_file)
    if script_args:
        settings = _json_settings(ds_data, ds_file) if ds_data is not None else _yaml_settings(y)
        deepspeed = y.dtype == "DEEPSPEED"
        report.findings += check_script_args(parse_script_args(script_args), settings, deepspeed)


def _yaml_settings(y: Yaml) -> dict[str, Setting]:
    settings = {}
    if y.dtype == "DEEPSPEED":
        for name, key in (("gradient_accumulation_steps", "gradient_accumulation_steps"), ("max_grad_norm", "gradient_clipping")):
            if y.ds.get(key) not in (None, "auto"):
                settings[name] = Setting(y.ds[key], y.file, f"deepspeed_config.{key}")
    mp = y.data.get("mixed_precision")
    if isinstance(mp, str):
        settings["mixed_precision"] = Setting(mp.lower(), y.file, "mixed_precision")
    return settings


def _referenced_json(report: CheckReport, y: Yaml, yaml_path: Path, cwd) -> tuple[dict | None, str]:
    value = y.ds.get("deepspeed_config_file")
    if not value or y.dtype != "DEEPSPEED":
        return None, ""
    key = "deepspeed_config.deepspeed_config_file"
    found = resolve_deepspeed_config_file(str(value), yaml_path, cwd)
    if found.path is None:
        tried = " and ".join(_display(p) for p in found.tried)
        report.findings.append(error(y.file, key, value, f"the DeepSpeed config file does not exist (looked at {tried})",
                                     "fix the path; accelerate opens it relative to the directory you launch from, "
                                     "so an absolute path is the safest"))  # fmt: skip
        return None, ""
    ds_file = _display(found.path)
    where = {
        "absolute": "an absolute path",
        "cwd": "relative to the current directory, as accelerate opens it",
        "yaml_dir": "relative to the YAML's folder; accelerate opens it relative to the directory you launch "
        f"from, so launch from {_display(yaml_path.parent)} or make the path absolute",
    }[found.how]
    report.notes.append(f"{y.file}: {key} {value!r} -> {ds_file} ({where})")
    ds_data = _load(report, found.path, ds_file, load_deepspeed_json)
    return (ds_data, ds_file) if ds_data is not None else (None, "")


def _precision_vs_json(report: CheckReport, y: Yaml, ds_data: dict, ds_file: str) -> None:
    """Add the JSON's precision to the 'mixed_precision next to deepspeed_config_file' error when they differ."""
    precision, key = json_precision(ds_data)
    yaml_mp = str(y.data["mixed_precision"]).lower()
    if precision is None or precision == yaml_mp:
        return
    for i, f in enumerate(report.findings):
        if f.file == y.file and f.key == "mixed_precision" and "deepspeed_config_file" in f.message:
            report.findings[i] = dataclasses.replace(
                f, message=f.message + f"; it also contradicts {ds_file} ({key} means {precision})"
            )


def _hint_deepspeed_key(f: Finding) -> Finding:
    """An unknown deepspeed_config key that is a DeepSpeed JSON key: say where it belongs."""
    prefix = "deepspeed_config."
    leaf = f.key[len(prefix):] if f.key.startswith(prefix) else ""
    if leaf and "." not in leaf and leaf in DEEPSPEED_JSON.keys and f.message.startswith("unknown key"):
        return dataclasses.replace(
            f,
            message=f.message + f" ({leaf!r} is a DeepSpeed JSON key, which accelerate does not pass on from here)",
            fix="put it in a DeepSpeed JSON file and point deepspeed_config.deepspeed_config_file at it, or remove it",
        )
    return f


__all__ = ["CheckReport", "check_config", "check_files"]
