"""disttune.env: redaction, package versions, the default accelerate config, the data shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from disttune import env

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"


def test_secret_names_and_hf_token_values_are_redacted():
    environ = {
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "1",
        "FOO_PASSWORD": "hunter2",  # not a listed prefix: never reported at all
        "ACCELERATE_AUTH_THING": "secret-value",
        "NCCL_DEBUG": "INFO",
        "TORCH_SOMETHING": f"prefix {TOKEN}",  # a token hiding in an innocent name
        "MASTER_PORT": "29500",
        "PATH": "/usr/bin",
    }
    got = env.relevant_env(environ)
    assert got == {
        "ACCELERATE_AUTH_THING": "***",
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": "***",
        "MASTER_PORT": "29500",
        "NCCL_DEBUG": "INFO",
        "TORCH_SOMETHING": "***",
    }


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASS", "MY_CREDENTIALS", "X_AUTH"])
def test_is_secret_by_name(name):
    assert env.is_secret(name, "plain")


def test_is_secret_by_value_only_for_token_shaped_values():
    assert env.is_secret("HF_HOME", TOKEN)
    assert not env.is_secret("HF_HOME", "/data/hf_cache")


def test_missing_package_is_reported_not_raised():
    versions = env.package_versions(("pyyaml", "surely-not-a-real-package-xyz"))
    assert versions["surely-not-a-real-package-xyz"] == env.NOT_INSTALLED
    assert versions["pyyaml"][0].isdigit()


def test_default_config_path_follows_hf_home_then_xdg_then_home(tmp_path):
    assert env.default_accelerate_config_path({"HF_HOME": str(tmp_path)}) == (
        tmp_path / "accelerate" / "default_config.yaml"
    )
    assert env.default_accelerate_config_path({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "huggingface" / "accelerate" / "default_config.yaml"
    )
    home = os.path.expanduser("~")
    assert str(env.default_accelerate_config_path({})).startswith(home)


def test_default_config_detected_and_summarised_with_secrets_redacted(tmp_path):
    cfg = tmp_path / "accelerate" / "default_config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "distributed_type: MULTI_GPU\nnum_processes: 8\n"
        f"deepspeed_config:\n  zero_stage: 2\nhub_token: {TOKEN}\n"
    )
    info = env.default_accelerate_config({"HF_HOME": str(tmp_path)})
    assert info["exists"] is True and info["path"] == str(cfg)
    assert info["settings"]["distributed_type"] == "MULTI_GPU"
    assert info["settings"]["deepspeed_config.zero_stage"] == 2
    assert info["settings"]["hub_token"] == "***"


def test_default_config_absent_and_broken(tmp_path):
    assert env.default_accelerate_config({"HF_HOME": str(tmp_path)})["exists"] is False
    cfg = tmp_path / "accelerate" / "default_config.yaml"
    cfg.parent.mkdir()
    cfg.write_text("a: [unclosed\n")
    info = env.default_accelerate_config({"HF_HOME": str(tmp_path)})
    assert info["exists"] is True and info["settings"] is None and "cannot read" in info["error"]


def test_our_path_is_the_one_accelerate_itself_computes(tmp_path):
    """Golden check against accelerate's own module-level constant (computed at import time)."""
    code = "from accelerate.commands.config import default_config_file; print(default_config_file)"
    child_env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "XDG_CACHE_HOME")}
    child_env["HF_HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == str(
        env.default_accelerate_config_path({"HF_HOME": str(tmp_path)})
    )


@pytest.fixture
def fake_torch(monkeypatch):
    facts = {
        "cuda": "12.8",
        "nccl": "2.27.3",
        "cuda_available": True,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA A100",
                "memory_gib": 79.3,
                "compute_capability": "8.0",
                "bf16": True,
            },
            {
                "index": 1,
                "name": "Tesla V100",
                "memory_gib": 31.7,
                "compute_capability": "7.0",
                "bf16": False,
            },
        ],
        "error": None,
    }
    monkeypatch.setattr(env, "torch_facts", lambda: facts)
    return facts


def test_collect_env_shape_is_json_ready(fake_torch, tmp_path):
    data = env.collect_env({"HF_HOME": str(tmp_path), "HF_TOKEN": TOKEN})
    assert set(data) == {
        "os",
        "python",
        "cpu_count",
        "packages",
        "torch",
        "default_accelerate_config",
        "environment",
        "fingerprint",
    }
    assert set(data["packages"]) == set(env.PACKAGES)
    assert json.loads(json.dumps(data)) == data
    assert TOKEN not in json.dumps(data)


def test_render_lists_every_gpu_and_the_default_config(fake_torch, tmp_path):
    text = env.render_env(env.collect_env({"HF_HOME": str(tmp_path), "HF_TOKEN": TOKEN}))
    assert "NVIDIA A100" in text and "bf16: yes" in text
    assert "Tesla V100" in text and "bf16: no" in text
    assert str(tmp_path / "accelerate" / "default_config.yaml") in text
    assert "HF_TOKEN=***" in text and TOKEN not in text


def test_fingerprint_changes_with_any_version(fake_torch, tmp_path):
    data = env.collect_env({"HF_HOME": str(tmp_path)})
    other = {**data, "packages": {**data["packages"], "deepspeed": "0.0.1"}}
    assert env.fingerprint(data) != env.fingerprint(other)
    assert env.fingerprint(data).split()[-1].startswith("sha256:")


def test_torch_facts_on_this_machine_never_raises():
    facts = env.torch_facts()
    assert set(facts) >= {"cuda", "nccl", "cuda_available", "gpus"}


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 5000 + "]" * 5000 + "\n", "a: &a [*a, *a]\n"],
    ids=["nested-5000", "self-alias"],
)
def test_a_hostile_default_config_is_one_line_not_a_crash(tmp_path, text):
    cfg = tmp_path / "accelerate" / "default_config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(text)
    info = env.default_accelerate_config({"HF_HOME": str(tmp_path)})
    assert info["settings"] is None
    assert (
        info["error"].startswith("cannot read it: ")
        and "refused" in info["error"]
        and "\n" not in info["error"]
    )
