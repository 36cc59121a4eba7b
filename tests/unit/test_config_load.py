"""Loading, shipped configs by name, and the promise that the config package stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from disttune.config import (
    check_config,
    load_accelerate_config,
    shipped_config_names,
    shipped_config_path,
)
from disttune.errors import UserError


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("distributed_type: DEEPSPEED\n  num_processes: 4\n")
    with pytest.raises(UserError, match=r"bad.yaml:2: not valid YAML"):
        load_accelerate_config(path)


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("- a\n- b\n", "a list, not a mapping")])
def test_non_mapping(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=words):
        load_accelerate_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_accelerate_config(tmp_path / "nope.yaml")
    assert "not found" in check_config(tmp_path / "nope.yaml")[0].message


def test_shipped_names_and_paths():
    names = shipped_config_names()
    assert "deepspeed_zero3" in names and "fsdp2" in names
    assert shipped_config_path("deepspeed_zero3") == shipped_config_path("deepspeed_zero3.yaml")
    assert shipped_config_path("fsdp2").is_file()
    with pytest.raises(UserError, match="deepspeed_zero3"):
        shipped_config_path("zero9")


@pytest.mark.parametrize("name", shipped_config_names())
def test_every_shipped_config_has_no_finding(name):
    assert check_config(shipped_config_path(name)) == []


def test_the_benchmark_configs_have_no_finding(monkeypatch):
    """benchmarks/configs/ (the GPU check's stage d) as the GPU check launches them, from the repository root."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    configs = sorted((root / "benchmarks" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert check_config(path.relative_to(root)) == [], path


def test_no_heavy_imports():
    code = (
        "import disttune.cli.check, disttune.cli.config, disttune.config, disttune.config.new; import sys; "
        "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules "
        "and 'transformers' not in sys.modules and 'accelerate' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
