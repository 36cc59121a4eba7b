"""The fast path's choices (train/kernels.py) for each device, strategy, model type and package set."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.train.kernels import choose_liger, describe_attention

LIGER = {"llama", "qwen2", "mistral", "qwen3_moe"}
DDP, ZERO3, FSDP = (
    {"strategy": "ddp", "world_size": 8},
    {"strategy": "deepspeed-zero3", "world_size": 8},
    {
        "strategy": "fsdp",
        "world_size": 8,
    },
)


@pytest.mark.parametrize(
    ("cuda", "layout", "model_type", "supported", "on", "says"),
    [
        (
            True,
            DDP,
            "llama",
            LIGER,
            True,
            "Liger kernels on (RMSNorm, SwiGLU, RoPE",
        ),  # measured: default
        (True, {"strategy": "ddp", "world_size": 1}, "qwen2", LIGER, True, "measured equal loss"),
        (True, ZERO3, "llama", LIGER, False, "off under deepspeed-zero3: not yet measured"),
        (True, FSDP, "llama", LIGER, False, "off under fsdp: not yet measured"),
        (True, DDP, "gpt2", LIGER, False, "no kernels for model type 'gpt2'"),
        (True, DDP, "llama", None, False, "liger-kernel is not installed (pip install liger-kernel=="),
        (False, DDP, "llama", LIGER, False, None),  # a CPU: nothing to say
    ],
)
def test_liger_is_on_by_default_only_where_a_gpu_measured_it(cuda, layout, model_type, supported, on, says):
    use, line = choose_liger(None, cuda, layout, model_type, supported)
    assert use is on
    assert (line is None) if says is None else (says in line), line


def test_the_users_choice_stands_and_an_unmeasured_one_says_so():
    assert choose_liger(False, True, DDP, "llama", LIGER) == (False, None)
    use, line = choose_liger(True, True, FSDP, "llama", LIGER)
    assert use and "not yet measured on a GPU under fsdp x8" in line
    use, line = choose_liger(True, True, ZERO3, "llama", LIGER)  # layer kernels: nothing reads a shard
    assert use and "not yet measured on a GPU under deepspeed-zero3 x8" in line


@pytest.mark.parametrize(
    ("cuda", "layout", "supported", "words"),
    [
        (False, DDP, LIGER, "no CUDA GPU is visible"),
        (True, DDP, None, "pip install liger-kernel=="),
    ],
)
def test_liger_asked_where_it_cannot_work_is_refused_with_the_reason(cuda, layout, supported, words):
    with pytest.raises(UserError, match=words) as err:
        choose_liger(True, cuda, layout, "llama", supported)
    assert "fix:" in str(err.value)


def test_the_attention_line_says_what_the_model_loaded_with_and_why(monkeypatch):
    import importlib.util

    config = SimpleNamespace(_attn_implementation="sdpa")
    assert (
        describe_attention(config, None, False, False) == "attention: sdpa (transformers' default on a CPU)"
    )
    assert describe_attention(config, "sdpa", True, False) == "attention: sdpa (--attn_implementation sdpa)"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else real(name)
    )
    line = describe_attention(config, None, True, False)
    assert "flash_attention_2 is installed but not yet measured on a GPU" in line
    assert "--attn_implementation flash_attention_2 --padding_free true" in line


def test_the_liger_pin_in_messages_is_the_one_make_install_installs():
    from pathlib import Path

    from disttune.train.kernels import LIGER_PIN

    lines = (Path(__file__).resolve().parents[2] / "requirements-cuda.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == [LIGER_PIN]


def test_flex_attention_is_refused_for_training_on_a_cpu_only():
    from disttune.train.kernels import check_attention

    with pytest.raises(UserError, match="flex_attention trains on GPUs only") as err:
        check_attention("flex_attention", cuda=False)
    assert "fix: drop --attn_implementation" in str(err.value)
    check_attention("flex_attention", cuda=True)
    check_attention("sdpa", cuda=False)
    check_attention(None, cuda=False)


def test_the_reason_for_refusing_flex_attention_on_a_cpu_still_holds():
    """torch itself refuses flex_attention's backward on a CPU; when a release adds it, this fails: lift the
    refusal in kernels.check_attention then."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.ones(1, 1, 16, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="does not support backward on CPU"):
        flex_attention(q, q, q)
