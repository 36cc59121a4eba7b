"""bench.py pure parts: strategy parsing, loss deviation, estimate for the same setup, table and plot."""

from __future__ import annotations

import pytest

from disttune.bench import (
    STRATEGIES,
    launch_command,
    max_loss_deviation,
    parse_strategies,
    plot,
    read_losses,
    render_markdown,
)
from disttune.errors import UserError


def test_parse_strategies():
    assert parse_strategies("ddp, zero3") == ["ddp", "zero3"]
    with pytest.raises(UserError, match="zero4"):
        parse_strategies("ddp,zero4")


def test_every_strategy_has_a_shipped_config_and_an_estimate():
    from disttune.bench import config_path
    from disttune.estimate.memory import STRATEGIES as ESTIMATED

    for name in STRATEGIES:  # bench estimates each under its own name (the table's row)
        assert config_path(name).is_file() and name in ESTIMATED


def test_launch_command_uses_localhost_and_a_free_port(tmp_path):
    cmd = launch_command("zero2", tmp_path / "s.py", tmp_path, 2, "no", ["--max_steps", "3"])
    assert cmd[cmd.index("--main_process_ip") + 1] == "127.0.0.1"
    assert int(cmd[cmd.index("--main_process_port") + 1]) > 0 and cmd[-2:] == ["--max_steps", "3"]
    assert cmd[cmd.index("--config_file") + 1].endswith("accelerate_configs/deepspeed_zero2.yaml")


def test_launch_command_takes_a_config_file_too(tmp_path):
    cmd = launch_command(tmp_path / "mine.yaml", tmp_path / "s.py", tmp_path, 1, "bf16", [])
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / "mine.yaml")
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and cmd[cmd.index("--num_processes") + 1] == "1"


def test_max_loss_deviation():
    assert max_loss_deviation([(1, 2.0), (2, 1.5)], [(1, 2.0), (2, 1.0)]) == 0.5
    assert max_loss_deviation([(3, 1.0)], [(1, 2.0)]) is None


def _data():
    run = {
        "strategy": "ddp",
        "tokens_per_second": 100.0,
        "peak_memory_bytes": 10**9,
        "peak_memory_kind": "x",
        "measured_model_state_bytes": 16 * 10**6,
        "estimated_model_state_bytes": 16 * 10**6,
        "estimate_rel_error": 0.0,
        "final_loss": 1.0,
        "max_loss_deviation_from_ddp": 0.0,
        "losses": [(1, 2.0), (2, 1.0)],
    }
    setup = {
        "date": "d",
        "machine": "m",
        "num_processes": 2,
        "model": "tiny",
        "max_steps": 2,
        "global_batch_size": 16,
        "max_length": 128,
        "mixed_precision": "no",
        "variant": "default",
    }
    return {"setup": setup, "runs": [run, {"strategy": "zero3", "error": "exit 1"}]}


def test_markdown_and_plot(tmp_path):
    md = render_markdown(_data())
    assert "| ddp | 100.0 |" in md and "| zero3 | failed: exit 1" in md
    plot(_data(), tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 10_000


def test_estimate_for_the_tiny_preset(tmp_path):
    from disttune.bench import estimated_state
    from disttune.train.tiny import tiny_checkpoint

    model_dir = str(tiny_checkpoint(42, tmp_path))
    ddp = estimated_state("ddp", model_dir, 2, "no", 8, 128)
    z3 = estimated_state("zero3", model_dir, 2, "no", 8, 128)
    assert ddp["total"] == 16 * 766080 and z3["total"] < ddp["total"] / 1.5


def test_read_losses_from_the_metrics_file_the_callback_writes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.5}\n\n{"step": 2, "loss": null}\n{"step": 3, "loss": 2.0}\n'
    )
    assert read_losses(tmp_path) == [(1, 2.5), (3, 2.0)]
    assert read_losses(tmp_path / "no_run_here") == []


def test_estimate_totals_beside_the_model_states(tmp_path):
    from disttune.bench import estimated_state
    from disttune.train.tiny import tiny_checkpoint

    model_dir = str(tiny_checkpoint(42, tmp_path))
    est = estimated_state("zero3", model_dir, 2, "no", 8, 128)
    # the GPU peak adds activations, buffers and the CUDA runtime (context + NCCL) to the model states
    assert est["gpu_total_bytes"] > est["total"] + 2**30 - 1
    assert est["reserved_bytes"] < est["gpu_total_bytes"]  # the runtime is outside torch's allocator
    assert est["active_params"] == est["num_params"] == 766080


def _config(tmp_path, **extra):
    import json

    config = {
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **extra,
    }
    tmp_path.mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_estimate_counts_tied_embeddings_once_and_moe_experts(tmp_path):
    from disttune.bench import estimated_state

    untied = estimated_state(
        "ddp", _config(tmp_path / "a", model_type="qwen2", tie_word_embeddings=False), 2, "no", 1, 16
    )
    tied = estimated_state(
        "ddp", _config(tmp_path / "b", model_type="qwen2", tie_word_embeddings=True), 2, "no", 1, 16
    )
    assert untied["num_params"] - tied["num_params"] == 100 * 64  # one V x h matrix fewer
    assert untied["total"] - tied["total"] == 16 * 100 * 64  # and its 16 bytes of DDP states
    moe = estimated_state(
        "zero3",
        _config(
            tmp_path / "c",
            model_type="qwen2_moe",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
        ),
        2,
        "no",
        1,
        16,
    )
    assert moe["num_params"] - moe["active_params"] == 2 * (4 - 2) * 3 * 32 * 64  # 2 idle experts per layer


def _run_dir(tmp_path, reserved=None):
    import json

    summary = {
        "world_size": 2,
        "mixed_precision": "no",
        "global_batch_size": 16,
        "global_step": 3,
        "peak_memory_bytes": [10**9, 10**9],
        "peak_memory_kind": "cpu_max_rss",
        "final_loss": 1.0,
        "model_state_bytes": [
            {"params": 10, "grads": 10, "optimizer": 20, "other": 0, "cpu_bytes": 0, "total": 40}
        ],
    }
    if reserved is not None:
        summary["peak_memory_reserved_bytes"] = reserved
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_summarize_run_records_reserved_memory_when_the_run_has_it(tmp_path):
    from disttune.bench import summarize_run

    est = {
        "total": 40,
        "params": 10,
        "grads": 10,
        "optimizer": 20,
        "cpu": 0,
        "terms": {},
        "reserved_bytes": 1100,
        "gpu_total_bytes": 1200,
        "num_params": 5,
        "active_params": 5,
    }
    cpu = summarize_run("ddp", _run_dir(tmp_path / "cpu"), est, 1.0)  # the CPU path: no CUDA figures
    assert cpu["peak_memory_reserved_bytes"] is None and cpu["reserved_rel_error"] is None
    assert cpu["estimate_rel_error"] == 0.0
    gpu = summarize_run("ddp", _run_dir(tmp_path / "gpu", reserved=[900, 1000]), est, 1.0)
    assert gpu["peak_memory_reserved_bytes"] == [900, 1000] and gpu["reserved_rel_error"] == 0.1
    data = _data()
    data["runs"][0].update(gpu)
    assert "| ddp | 0.00 MB | 0.00 MB | +10.0% |" in render_markdown(data)
    assert "max_memory_reserved" not in render_markdown(_data())
