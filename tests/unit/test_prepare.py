"""Preparing the run folder (train/prepare.py): output folder, disk estimate (golden numbers), resume compatibility, secrets."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.train.distributed import current_layout
from disttune.train.prepare import (
    check_disk_space,
    check_output_dir,
    checkpoints_kept,
    estimate_checkpoint_size,
    prepare_run,
)


def test_checkpoint_size_matches_the_measured_tiny_ddp_checkpoint():
    # tiny preset, fp32, DDP: model.safetensors 3,068,424 B + optimizer.pt 6,160,971 B on disk.
    params = 766_080  # counted from the tiny LlamaConfig
    size = estimate_checkpoint_size(params, params, 4, "ddp", kept=2)
    assert abs(size.per_checkpoint - (3_068_424 + 6_160_971)) / size.per_checkpoint < 0.01
    assert size.total == size.per_checkpoint * 3 + params * 4
    zero = estimate_checkpoint_size(params, params, 4, "deepspeed-zero2", kept=2)
    assert zero.per_checkpoint == size.per_checkpoint + params * 4


def test_checkpoints_kept():
    assert checkpoints_kept("no", 500, None, 1000) == 0
    assert checkpoints_kept("steps", 4, None, 8) == 2
    assert checkpoints_kept("steps", 4, 1, 8) == 1
    assert checkpoints_kept("steps", 4, 3, -1) == 3


def test_disk_refusal_names_sizes_and_fix(tmp_path):
    size = estimate_checkpoint_size(7_000_000_000, 7_000_000_000, 2, "deepspeed-zero3", kept=2)
    with pytest.raises(UserError, match="(?s)GiB free.*save_total_limit"):
        check_disk_space(tmp_path, size, free_bytes=10 * 1024**3)
    check_disk_space(tmp_path, size, free_bytes=10**13)


def test_output_dir_refusals(tmp_path):
    check_output_dir(tmp_path / "new", resuming=False, overwrite=False)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="refusing to overwrite"):
        check_output_dir(tmp_path, resuming=False, overwrite=False)
    check_output_dir(tmp_path, resuming=True, overwrite=False)
    check_output_dir(tmp_path, resuming=False, overwrite=True)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot write there"):
            check_output_dir(locked / "run", resuming=False, overwrite=False)


def test_layout_from_the_launcher_environment():
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "8"}
    assert current_layout(env) == {"world_size": 8, "strategy": "deepspeed-zero3"}
    assert current_layout({}) == {"world_size": 1, "strategy": "ddp"}


def test_hub_token_moves_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = SimpleNamespace(resume_from_checkpoint=None, output_dir=str(tmp_path), hub_token="hf_secret")
    prepare_run(SimpleNamespace(overwrite_output_dir=False), args)
    assert args.hub_token is None and os.environ["HF_TOKEN"] == "hf_secret"


def test_safe_inputs_yaml_safe_load_only_and_no_remote_code_by_default(tmp_path):
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "disttune"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "yaml.load(" not in text and "unsafe_load" not in text and "yaml.Loader" not in text, path
    from disttune.train.args import parse_args

    _, training_args, _ = parse_args(["--output_dir", str(tmp_path)])
    assert training_args.trust_remote_code is False  # passed to every from_pretrained
