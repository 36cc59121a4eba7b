"""``check_files``: every problem of accelerate configs (and the DeepSpeed JSON they name), at once.

Each file's kind (accelerate config, DeepSpeed config, DeepSpeed inference config) is decided from its keys,
not its extension: DeepSpeed JSON is published as ``.conf`` and ``.yaml``, and accelerate reads a ``.json``
config too. A DeepSpeed JSON given alone is judged as DeepSpeed judges it; what only accelerate requires of
it applies when an accelerate config points to it (and is said, as a warning, "under accelerate" otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from disttune.config import renamed
from disttune.config.bounded import Parsed
from disttune.config.deepspeed_rules import check_deepspeed_rules, json_precision
from disttune.config.deepspeed_schema import DEEPSPEED_INFERENCE_JSON, DEEPSPEED_JSON, INFERENCE, REMOVED
from disttune.config.findings import ERROR, Finding, error, warning
from disttune.config.load import is_repository_root, read_config, resolve_deepspeed_config_file
from disttune.config.replaced import check_replaced
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
from disttune.config.script_args import ScriptArgs, Setting, check_precision_args, check_script_args
from disttune.config.spellings import check_spellings
from disttune.config.validate import Context, check_section
from disttune.errors import UserError

ACCELERATE, DEEPSPEED = "accelerate config", "DeepSpeed config"
DEEPSPEED_INFERENCE = "DeepSpeed inference config"


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


# Keys only DeepSpeed's inference config (deepspeed.init_inference) has, and keys only a training config has.
_INFERENCE_ONLY = frozenset(DEEPSPEED_INFERENCE_JSON.keys) - frozenset(DEEPSPEED_JSON.keys)
_TRAINING_ONLY = frozenset(DEEPSPEED_JSON.keys) - frozenset(DEEPSPEED_INFERENCE_JSON.keys)


def config_kind(data: dict, path: Path) -> tuple[str, str | None]:
    """(kind, note): ``ACCELERATE``, ``DEEPSPEED`` or ``DEEPSPEED_INFERENCE`` from the top-level keys; the note
    says what was assumed.

    Keys known to only one of the schemas vote; a tie (no known key, or as many of each) falls back on the
    extension (``.json``: DeepSpeed, anything else: accelerate) and says so.
    """
    names = {str(k) for k in data}
    ours = {k for k in names if k in CLUSTER_CONFIG.keys or k in SAGEMAKER_CONFIG.keys}
    theirs = {k for k in names if k in DEEPSPEED_JSON.keys}
    if names & _INFERENCE_ONLY and not names & _TRAINING_ONLY and not ours:
        return DEEPSPEED_INFERENCE, f"{path}: read as a {DEEPSPEED_INFERENCE} (deepspeed.init_inference)"
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
    paths, num_processes: int | None = None, script_args: ScriptArgs | None = None, cwd=None
) -> CheckReport:
    """Check each path (accelerate config, or a DeepSpeed JSON given directly) and collect everything.

    ``script_args``: the training script's arguments as its own parser read them
    (``train.args.compared_flags``), compared with what the configs set; None: nothing to compare.
    """
    report = CheckReport()
    if script_args is not None and script_args.problem:
        report.findings.append(  # a warning: another script's parser may take what ours refuses
            warning(
                "-- SCRIPT ARGS",
                "",
                None,
                f"disttune's training script would refuse these arguments ({script_args.problem}), so they were "
                "not compared with the config",
                "for 07_distributed_training.py, write each flag in full as its --help lists it",
            )
        )
    for path in paths:
        path = Path(path)
        parsed = _load(report, path, str(path))
        if parsed is None:
            continue
        data = parsed.data
        kind, note = config_kind(data, path)
        if note:
            report.notes.append(note)
        if parsed.json_error and (kind != ACCELERATE or path.suffix.lower() == ".json"):
            # DeepSpeed reads its config with json.load, and accelerate reads a .json config the same way.
            report.findings.append(error(str(path), "", None, parsed.json_error, _UNLOADABLE_FIX))
            continue
        report.findings += _repeated(parsed, str(path), deepspeed_alone=kind != ACCELERATE)
        if kind == DEEPSPEED_INFERENCE:
            report.findings += check_section(
                data, DEEPSPEED_INFERENCE_JSON, str(path), context=INFERENCE_CONTEXT
            )
            report.findings += check_spellings(data, str(path), root=INFERENCE)
        elif kind == DEEPSPEED:
            _check_json_file(report, data, str(path), num_processes, script_args)
        else:
            report.configs[str(path)] = data
            _check_yaml_file(report, data, path, num_processes, script_args, cwd)
    return report


def check_config(
    path, num_processes: int | None = None, script_args: ScriptArgs | None = None
) -> list[Finding]:
    """All findings for one accelerate config (with the DeepSpeed JSON it references) or one DeepSpeed JSON."""
    return check_files([path], num_processes, script_args).findings


_UNLOADABLE_FIX = "fix the file so that it loads, then run disttune check again"


def _load(report: CheckReport, path: Path, file: str, syntax: str = "any") -> Parsed | None:
    """Read one file for the report: what was parsed (a mapping), or None with the reason recorded as a finding."""
    report.files.append(file)
    try:
        parsed = read_config(path, "config", syntax)
    except UserError as exc:
        report.findings.append(error(file, "", None, str(exc), _UNLOADABLE_FIX))
        return None
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
    return parsed


def _repeated(parsed: Parsed, file: str, deepspeed_alone: bool) -> list[Finding]:
    """Keys written twice in one mapping: a lost value is an error; the same value twice loses nothing.

    DeepSpeed's own reader (``DeepSpeedConfig`` on a path, as under the ``deepspeed`` launcher) refuses any
    repeated key; accelerate and HF Trainer read the JSON with ``json.load``, which keeps the last value.
    """
    out = []
    for key, line, same in parsed.repeated:
        again = f" (again on line {line})" if line else ""
        if not same:
            message = f"{key!r} is written twice in the same mapping{again} with different values; only the last is used"
            out.append(error(file, key, None, message, "keep only the one you meant"))
        elif deepspeed_alone:
            message = (
                f"{key!r} is written twice in the same mapping{again}, with the same value: DeepSpeed stops when it "
                "opens the file itself ('Duplicate keys in DeepSpeed config'); accelerate keeps one and loses nothing"
            )
            out.append(error(file, key, None, message, "remove one of them"))
        else:
            message = (
                f"{key!r} is written twice in the same mapping{again}, with the same value: nothing is lost, but an "
                "edit to one of them would be silently overridden by the other"
            )
            out.append(warning(file, key, None, message, "remove one of them"))
    return out


# Hints attached to an unknown key where the finding is made (validate.Context).
_COMPILE_HINT = (
    "",
    "remove it: DeepSpeed 0.19.8 has no compile.disable/backend (its compile section holds DeepCompile settings); "
    "to use torch.compile call engine.compile() or your trainer's torch_compile option",
)
DEEPSPEED_CONTEXT = Context(
    hints={"compile.disable": _COMPILE_HINT, "compile.backend": _COMPILE_HINT}, removed=REMOVED
)
INFERENCE_CONTEXT = Context()
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


def _check_json(
    report: CheckReport, data: dict, file: str, world: int | None, under_accelerate: bool
) -> None:
    report.findings += check_section(data, DEEPSPEED_JSON, file, context=DEEPSPEED_CONTEXT)
    report.findings += check_spellings(data, file, under_accelerate=under_accelerate)
    report.findings += check_deepspeed_rules(data, file, world, under_accelerate)


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
    _check_json(report, data, file, world, under_accelerate=False)
    report.findings += check_replaced(data, file, args)
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
        _check_json(report, ds_data, ds_file, y.world, under_accelerate=True)
        report.findings += check_replaced(ds_data, ds_file, args)
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


_KEY = "deepspeed_config.deepspeed_config_file"


def _referenced_json(report: CheckReport, y: Accelerate, yaml_path: Path, cwd) -> tuple[dict | None, str]:
    """Load the DeepSpeed JSON the YAML names, resolved as a launch from here resolves it (an error when that
    fails); when it exists relative to another folder, say which one to launch from, and check it there."""
    value = y.ds.get("deepspeed_config_file")
    if not value or y.dtype != "DEEPSPEED":
        return None, ""
    found = resolve_deepspeed_config_file(str(value), yaml_path, cwd)
    finding = _where_finding(y, value, found, yaml_path)
    if finding is not None:
        report.findings.append(finding)
    if found.path is None:
        return None, ""
    ds_file = _display(found.path)
    if found.how in ("cwd", "absolute"):
        how = (
            "an absolute path"
            if found.how == "absolute"
            else "relative to the current directory, as accelerate opens it"
        )
        report.notes.append(f"{y.file}: {_KEY} {value!r} -> {ds_file} ({how})")
    loaded = _load(report, found.path, ds_file, syntax="json")  # DeepSpeed reads it with json.load
    if loaded is None:
        return None, ""
    report.findings += _repeated(loaded, ds_file, deepspeed_alone=False)
    return loaded.data, ds_file


def _where_finding(y: Accelerate, value, found, yaml_path: Path) -> Finding | None:
    """None when the launch finds the file from here; else what is wrong and which directory to launch from."""
    if found.how == "tilde":
        return error(
            y.file,
            _KEY,
            value,
            "accelerate passes the path on as written and nothing expands '~', so the launch does not find it"
            + (f" (it exists at {found.tried[0]})" if found.path else ""),
            f"write the absolute path: {found.tried[0]}",
        )
    if found.how == "elsewhere":
        base, yaml_dir = found.base, Path(os.path.abspath(yaml_path.parent))
        if is_repository_root(base):
            what = "the repository root"
        elif base == yaml_dir:
            what = "the config's folder"
        else:
            what = (
                "a folder above the config"
                if base in yaml_dir.parents
                else "a folder above the current directory"
            )
        return error(
            y.file,
            _KEY,
            value,
            f"not found from the current directory ({_display(found.tried[0])}), which is where accelerate launch "
            f"opens it, so a launch from here stops; it exists relative to {what}, {base}",
            f"launch from {base} (cd {base} && accelerate launch ...), or make the path absolute: "
            f"{found.path}",
        )
    if found.how == "missing":
        tried = " and ".join(_display(p) for p in found.tried)
        return error(
            y.file,
            _KEY,
            value,
            f"the DeepSpeed config file does not exist (looked at {tried}, and relative to every folder above "
            "them)",
            "fix the path; accelerate opens it relative to the directory you launch from, so an absolute path "
            "is the safest",
        )
    return None


__all__ = ["CheckReport", "check_config", "check_files", "config_kind"]
