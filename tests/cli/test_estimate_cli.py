"""``disttune estimate`` in process: exit codes, the table, the JSON shape."""

from __future__ import annotations

import json

import pytest

from disttune.cli import main

BYTE_KEYS = {"params_bytes", "grads_bytes", "optimizer_bytes", "model_state_bytes", "activation_bytes",
             "buffer_bytes", "total_bytes", "cpu_bytes_per_node"}


def test_text_table(capsys):
    rc = main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--gradient_checkpointing"])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("strategy"))
    assert header.split() == ["strategy", "params", "grads", "optim", "states", "activ", "buffers", "total",
                              "cpu/node", "fits"]
    assert "Recommendation: zero1 is the fastest strategy that fits" in out
    assert "Rule of thumb, saving vs DDP: ZeRO-2 ~30% (here" in out


def test_json_shape(capsys):
    rc = main(["estimate", "--model", "Qwen/Qwen2.5-0.5B", "--num_processes", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(data) >= {"model", "inputs", "strategies", "recommendation"}
    assert data["model"]["num_params"] == 494_032_768
    assert [s["name"] for s in data["strategies"]] == ["ddp", "zero1", "zero2", "zero3", "zero2_offload",
                                                      "zero3_offload", "zero3_offload_all", "fsdp2"]
    for s in data["strategies"]:
        assert BYTE_KEYS <= set(s) and isinstance(s["fits"], bool)
        assert s["model_state_bytes"] == s["params_bytes"] + s["grads_bytes"] + s["optimizer_bytes"]
        assert s["total_bytes"] == s["model_state_bytes"] + s["activation_bytes"] + s["buffer_bytes"]
    assert data["recommendation"]["strategy"] == "ddp"
    assert data["inputs"]["headroom"] == 0.1


def test_num_params_golden_and_unknown_activations(capsys):
    rc = main(["estimate", "--num_params", "7.5e9", "--num_processes", "64", "--strategies",
               "ddp,zero1,zero2,zero3", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    states = {s["name"]: s["model_state_bytes"] / 1e9 for s in data["strategies"]}
    assert states == pytest.approx({"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}, abs=0.1)
    assert all(s["activation_bytes"] is None for s in data["strategies"])
    main(["estimate", "--num_params", "7.5e9", "--num_processes", "64"])
    assert "Activations unknown" in capsys.readouterr().out


def test_lora_and_config_folder(tmp_path, capsys):
    config = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    rc = main(["estimate", "--model", str(tmp_path), "--lora_r", "8", "--num_processes", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["model"]["trainable_params"] == 2 * 8 * (64 + 64 + 2 * (64 + 32) + 64 + 64 + 2 * (64 + 128) + 192)


def test_nothing_fits_suggests(capsys):
    rc = main(["estimate", "--model", "meta-llama/Llama-3.1-70B", "--num_processes", "2", "--gpu_memory_gb", "24",
               "--max_length", "8192"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Recommendation: Nothing fits" in out and "  - " in out


def test_list_models(capsys):
    assert main(["estimate", "--list_models"]) == 0
    assert "meta-llama/Llama-3.1-8B" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["estimate", "--model", "gpt-5"], "Known models"),
    (["estimate", "--model", "/no/such/dir/config.json"], "no such file"),
    (["estimate", "--num_params", "-5"], "positive"),
    (["estimate", "--num_params", "1e9", "--num_processes", "0"], "positive"),
    (["estimate", "--num_params", "1e9", "--lora_r", "8"], "--lora_r needs"),
    (["estimate", "--num_params", "1e9", "--strategies", "ddp,zero4"], "unknown zero4"),
    (["estimate"], "give --model"),
])
def test_user_errors_exit_1(capsys, argv, needle):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["estimate", "--model", "x", "--num_params", "1e9"],
    ["estimate", "--num_params", "1e9", "--mixed_precision", "fp8"],
    ["estimate", "--num_params", "many"],
])
def test_argparse_misuse_exit_2(capsys, argv):
    assert main(argv) == 2
