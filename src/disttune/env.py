"""What this machine runs: versions, GPUs, the default accelerate config and the relevant variables.

``collect_env()`` returns plain data (JSON-ready); ``render_env(data)`` turns it into the text report.
Secrets never leave this module: any variable whose name looks like a credential, and any value that
looks like a Hugging Face token, is replaced by ``***`` before it is returned.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"
PACKAGES = ("torch", "accelerate", "deepspeed", "transformers", "trl", "peft", "datasets")
ENV_PREFIXES = ("NCCL_", "TORCH_", "ACCELERATE_", "HF_")
ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
)
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASS", "CREDENTIAL", "AUTH")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
NOT_INSTALLED = "not installed"


def is_secret(name: str, value: object = "") -> bool:
    """True when ``name`` looks like a credential or ``value`` looks like a Hugging Face token."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS) or bool(_HF_TOKEN.search(str(value)))


def redact(name: str, value: object) -> object:
    """``value``, or ``***`` when it is (or may be) a secret."""
    return REDACTED if is_secret(name, value) else value


def relevant_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that change how a distributed run behaves, sorted by name, secrets redacted."""
    environ = os.environ if environ is None else environ
    keep = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    return {k: str(redact(k, keep[k])) for k in sorted(keep)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (read from its metadata, nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


def default_accelerate_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The file ``accelerate launch`` reads when it is given no ``--config_file``.

    Mirrors accelerate/commands/config/config_args.py: ``$HF_HOME/accelerate/default_config.yaml``,
    where HF_HOME defaults to ``$XDG_CACHE_HOME/huggingface`` and XDG_CACHE_HOME to ``~/.cache``.
    """
    environ = os.environ if environ is None else environ
    cache = environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    hf_home = environ.get("HF_HOME", os.path.join(cache, "huggingface"))
    return Path(os.path.expanduser(hf_home)) / "accelerate" / "default_config.yaml"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = redact(str(key), value)
    return flat


def default_accelerate_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where the default accelerate config lives, whether it exists, and its settings (flattened)."""
    from disttune.config.load import read_config
    from disttune.errors import UserError

    path = default_accelerate_config_path(environ)
    info: dict[str, Any] = {"path": str(path), "exists": path.is_file(), "settings": None, "error": None}
    if info["exists"]:
        try:  # the bounded reader: this file can come from anywhere (deep nesting, alias bombs, huge files)
            loaded = read_config(path, "default accelerate config", syntax="yaml").data
        except UserError as exc:
            info["error"] = f"cannot read it: {exc}".splitlines()[0]
        else:
            if isinstance(loaded, Mapping):
                info["settings"] = _flatten(loaded)
            else:
                info["error"] = "not a YAML mapping"
    return info


def torch_facts() -> dict[str, Any]:
    """torch's CUDA and NCCL versions and every visible GPU; empty facts when torch is missing or broken."""
    facts: dict[str, Any] = {"cuda": None, "nccl": None, "cuda_available": False, "gpus": [], "error": None}
    try:
        import torch
    except Exception as exc:  # a broken torch must not break the report
        facts["error"] = f"import torch failed: {exc}".splitlines()[0]
        return facts
    facts["cuda"] = torch.version.cuda
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        if facts["cuda_available"]:
            nccl = torch.cuda.nccl.version()
            facts["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                facts["gpus"].append(
                    {
                        "index": index,
                        "name": props.name,
                        "memory_gib": round(props.total_memory / 2**30, 1),
                        "compute_capability": f"{props.major}.{props.minor}",
                        # bf16 runs natively from Ampere (compute capability 8.0) on.
                        "bf16": props.major >= 8,
                    }
                )
    except Exception as exc:  # driver mismatch, no NVML, ...: report it, keep going
        facts["error"] = f"CUDA query failed: {exc}".splitlines()[0]
    return facts


def fingerprint(data: Mapping[str, Any]) -> str:
    """One line of versions that must match on every node, ending in a short hash for quick diffing."""
    versions = data["packages"]
    parts = [f"python={data['python']}", *(f"{k}={versions[k]}" for k in PACKAGES)]
    parts += [f"cuda={data['torch']['cuda']}", f"nccl={data['torch']['nccl']}"]
    line = " ".join(p.replace(" ", "_") for p in parts)
    digest = hashlib.sha256(line.encode()).hexdigest()[:12]
    return f"{line} sha256:{digest}"


def collect_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything ``disttune env`` reports, as plain JSON-ready data."""
    data: dict[str, Any] = {
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "torch": torch_facts(),
        "default_accelerate_config": default_accelerate_config(environ),
        "environment": relevant_env(environ),
    }
    data["fingerprint"] = fingerprint(data)
    return data


def render_env(data: Mapping[str, Any]) -> str:
    """The human-readable report of ``collect_env()``."""
    t = data["torch"]
    lines = [
        "disttune env",
        "",
        f"OS:        {data['os']}",
        f"Python:    {data['python']}",
        f"CPU cores: {data['cpu_count']}",
        "",
        "Packages:",
    ]
    lines += [f"  {name:<13} {ver}" for name, ver in data["packages"].items()]
    lines += ["", f"CUDA (torch build): {t['cuda'] or 'none (CPU build)'}", f"NCCL: {t['nccl'] or 'n/a'}"]
    if t.get("error"):
        lines.append(f"  note: {t['error']}")
    if t["gpus"]:
        lines.append(f"GPUs ({len(t['gpus'])}):")
        for g in t["gpus"]:
            lines.append(
                f"  [{g['index']}] {g['name']}  {g['memory_gib']} GiB  sm_{g['compute_capability']}  "
                f"bf16: {'yes' if g['bf16'] else 'no'}"
            )
    else:
        lines.append("GPUs: none visible (runs on CPU with the gloo backend)")
    cfg = data["default_accelerate_config"]
    lines += [
        "",
        "Default accelerate config (used by `accelerate launch` without --config_file):",
        f"  path:   {cfg['path']}",
        f"  exists: {'yes' if cfg['exists'] else 'no'}",
    ]
    if cfg.get("error"):
        lines.append(f"  error:  {cfg['error']}")
    for key, value in (cfg.get("settings") or {}).items():
        lines.append(f"  {key}: {value}")
    lines += ["", "Environment:"]
    env = data["environment"]
    lines += (
        [f"  {k}={v}" for k, v in env.items()]
        if env
        else ["  (none of NCCL_*, TORCH_*, ACCELERATE_*, HF_*, CUDA_VISIBLE_DEVICES, MASTER_*, RANK... set)"]
    )
    lines += ["", "Fingerprint (must be identical on every node):", f"  {data['fingerprint']}"]
    return "\n".join(lines)
