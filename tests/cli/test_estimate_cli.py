"""``disttune estimate`` in process: exit codes, the table, the JSON shape."""

from __future__ import annotations

import json

import pytest

from disttune.cli import main
from disttune.strategies import NAMES

BYTE_KEYS = {
    "params_bytes",
    "grads_bytes",
    "optimizer_bytes",
    "model_state_bytes",
    "activation_bytes",
    "buffer_bytes",
    "runtime_bytes",
    "allocated_bytes",
    "reserved_bytes",
    "total_bytes",
    "cpu_bytes_per_node",
}


def test_text_table(capsys):
    rc = main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--gradient_checkpointing"])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("strategy"))
    assert header.split() == [
        "strategy",
        "params",
        "grads",
        "optim",
        "activ",
        "alloc",
        "reserved",
        "total",
        "cpu/node",
        "fits",
    ]
    assert "CUDA allocator: expandable segments" in out  # the allocator the run will use
    assert "Recommendation: zero1 is the fastest strategy that fits" in out
    assert "Rule of thumb, saving vs DDP: ZeRO-2 ~30% (here" in out


def test_json_shape(capsys):
    rc = main(["estimate", "--model", "Qwen/Qwen2.5-0.5B", "--num_processes", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(data) >= {"model", "inputs", "strategies", "recommendation"}
    assert data["model"]["num_params"] == 494_032_768
    assert [s["name"] for s in data["strategies"]] == list(
        NAMES
    )  # the table's order (its names: pinned there)
    for s in data["strategies"]:
        assert BYTE_KEYS <= set(s) and isinstance(s["fits"], bool)
        assert s["model_state_bytes"] == s["params_bytes"] + s["grads_bytes"] + s["optimizer_bytes"]
        assert s["allocated_bytes"] == s["phases"][s["peak_phase"]] == max(s["phases"].values())
        assert s["reserved_bytes"] == s["allocated_bytes"] + sum(s["reserve"].values())
        assert s["total_bytes"] == s["reserved_bytes"] + s["runtime_bytes"]
        assert s["allocator"] == "expandable" and s["activations"]
    assert data["recommendation"]["strategy"] == "ddp"
    assert data["inputs"]["headroom"] == 0.1


def test_num_params_golden_and_unknown_activations(capsys):
    rc = main(
        [
            "estimate",
            "--num_params",
            "7.5e9",
            "--num_processes",
            "64",
            "--strategies",
            "ddp,zero1,zero2,zero3",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    states = {s["name"]: s["model_state_bytes"] / 1e9 for s in data["strategies"]}
    assert states == pytest.approx({"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}, abs=0.1)
    assert all(s["activation_bytes"] is None for s in data["strategies"])
    main(["estimate", "--num_params", "7.5e9", "--num_processes", "64"])
    assert "Activations unknown" in capsys.readouterr().out


def test_lora_and_config_folder(tmp_path, capsys):
    config = {
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    rc = main(["estimate", "--model", str(tmp_path), "--lora_r", "8", "--num_processes", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["model"]["trainable_params"] == 2 * 8 * (
        64 + 64 + 2 * (64 + 32) + 64 + 64 + 2 * (64 + 128) + 192
    )


def test_nothing_fits_suggests(capsys):
    rc = main(
        [
            "estimate",
            "--model",
            "meta-llama/Llama-3.1-70B",
            "--num_processes",
            "2",
            "--gpu_memory_gb",
            "24",
            "--max_length",
            "8192",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "Recommendation: Nothing fits" in out and "  - " in out


def test_list_models(capsys):
    assert main(["estimate", "--list_models"]) == 0
    assert "meta-llama/Llama-3.1-8B" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["estimate", "--model", "gpt-5"], "Known models"),
        (["estimate", "--model", "/no/such/dir/config.json"], "no such file"),
        (["estimate", "--num_params", "-5"], "positive"),
        (["estimate", "--num_params", "1e9", "--num_processes", "0"], "positive"),
        (["estimate", "--num_params", "1e9", "--lora_r", "8"], "--lora_r needs"),
        (["estimate", "--num_params", "1e9", "--strategies", "ddp,zero4"], "unknown zero4"),
        (["estimate"], "give --model"),
    ],
)
def test_user_errors_exit_1(capsys, argv, needle):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "--model", "x", "--num_params", "1e9"],
        ["estimate", "--num_params", "1e9", "--mixed_precision", "fp8"],
        ["estimate", "--num_params", "many"],
    ],
)
def test_argparse_misuse_exit_2(capsys, argv):
    assert main(argv) == 2


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["estimate", "--num_params", "inf"], "positive count"),
        (["estimate", "--num_params", "nan"], "positive count"),
        (["estimate", "--num_params", "1e30"], "up to 1e15"),
        (["estimate", "--num_params", "1e9", "--gpu_memory_gb", "inf"], "--gpu_memory_gb"),
        (["estimate", "--num_params", "1e9", "--host_memory_gb", "-1"], "--host_memory_gb"),
        (["estimate", "--num_params", "1e9", "--gpu", "H300"], "unknown card"),
    ],
)
def test_absurd_numbers_exit_1(capsys, argv, needle):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


BASE = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"num_attention_heads": 0}, "num_attention_heads is 0"),
        ({"head_dim": -16}, "head_dim is -16"),
        ({"num_hidden_layers": 0}, "num_hidden_layers is 0"),
        ({"hidden_size": 64.5}, "hidden_size is 64.5"),
        ({"vocab_size": "many"}, "vocab_size is 'many'"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"hidden_size": 66}, "not divisible"),
        ({"model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 4}, "exceeds"),
    ],
)
def test_bad_config_json_exits_1_with_the_key(tmp_path, capsys, change, needle):
    (tmp_path / "config.json").write_text(json.dumps({**BASE, **change}))
    assert main(["estimate", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert needle in err and str(tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "name,preset",
    [
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
        ("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "meta-llama/Meta-Llama-3-70B"),
        ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"),
        ("google/gemma-2-9b-it", "google/gemma-2-9b"),
        ("gemma-3-1b-it", "google/gemma-3-1b-pt"),
        ("google/gemma-3-27b-it", "google/gemma-3-27b-pt"),
        ("google/gemma-3-4b-it", "google/gemma-3-4b-pt"),
        ("microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct"),
        ("microsoft/phi-4", "microsoft/phi-4"),
        ("Qwen/Qwen3-8B-Base", "Qwen/Qwen3-8B"),
        ("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-v0.1"),
    ],
)
def test_presets_resolve(capsys, name, preset):
    assert main(["estimate", "--model", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == preset


def test_moe_reports_total_and_active_params(capsys):
    assert main(["estimate", "--model", "Qwen/Qwen3-30B-A3B", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["num_params"] == 30_532_122_624  # memory: every expert
    # compute: 8 of 128 experts per token; each expert is 3 matrices of 768 x 2048, in 48 layers
    assert model["active_params"] == 30_532_122_624 - 48 * (128 - 8) * 3 * 768 * 2048 == 3_353_032_704
    assert model["train_flops_per_token"] == 6 * model["active_params"]


def test_gpu_by_card_name(capsys):
    assert main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "H100-80GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["inputs"]["gpu_memory_gb"] == pytest.approx(81_559 / 1024)
        and data["inputs"]["gpu_name"] == "H100-80GB"
    )
    assert main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "a100_40gb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["gpu_memory_gb"] == 40.0
    assert main(["estimate", "--list_gpus"]) == 0
    assert "H200" in capsys.readouterr().out
    assert main(["estimate", "--num_params", "1e9", "--gpu", "H200", "--gpu_memory_gb", "80"]) == 2


def test_host_ram_short_marks_offload_not_fitting(capsys):
    argv = [
        "estimate",
        "--model",
        "meta-llama/Llama-3.1-70B",
        "--gpu",
        "H100-80GB",
        "--gradient_checkpointing",
        "--host_memory_gb",
        "1024",
    ]
    assert main([*argv, "--json"]) == 0
    by_name = {s["name"]: s for s in json.loads(capsys.readouterr().out)["strategies"]}
    z3o = by_name["zero3_offload_optimizer"]
    assert z3o["gpu_fits"] and z3o["host_fits"] is False and z3o["fits"] is False
    assert z3o["cpu_bytes_per_node"] / 2**30 == pytest.approx(1182.7, abs=0.1)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "zero3_offload_optimizer: needs 1183 GiB of host RAM per node" in out and "no (host)" in out
    assert "2 nodes of 8" in out and "without offload" in out and "LoRA" in out
    assert main([*argv[:-1], "2048", "--json"]) == 0  # enough RAM: the offload strategy fits
    assert {s["name"]: s for s in json.loads(capsys.readouterr().out)["strategies"]}[
        "zero3_offload_optimizer"
    ]["fits"]


def test_more_gpus_suggested_with_checkpointing_when_that_needs_fewer(capsys):
    """Without checkpointing, 70B without offload needs 512 GPUs; with it, 32: both lines are shown.

    With the full-logits loss: TRL's chunked loss adds the lm_head's fp32 gradient (4 V h, 3.9 GiB) on every
    rank, which 1024 GPUs without checkpointing cannot absorb, so its output has the checkpointing line only.
    """
    argv = [
        "estimate",
        "--model",
        "meta-llama/Llama-3.1-70B",
        "--gpu",
        "H100-80GB",
        "--host_memory_gb",
        "1024",
        "--loss",
        "full",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "without offload (no host RAM needed), on 512 GPUs (64 nodes of 8): zero3" in out
    assert "without offload and with --gradient_checkpointing, on 32 GPUs (4 nodes of 8): fsdp2" in out
    # with offload, 16 GPUs suffice either way: no second line for the same count
    assert out.count("use 16 GPUs (2 nodes of 8)") == 1


def test_help_prints_a_plain_percent(capsys):
    assert main(["estimate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "10% headroom" in out and "%%" not in out


def test_checkpointing_and_cross_entropy_options_change_the_activations(capsys):
    def activations(*flags):
        assert (
            main(
                [
                    "estimate",
                    "--model",
                    "meta-llama/Llama-3.1-8B",
                    "--max_length",
                    "8192",
                    "--per_device_train_batch_size",
                    "2",
                    "--strategies",
                    "fsdp2",
                    *flags,
                    "--json",
                ]
            )
            == 0
        )
        return json.loads(capsys.readouterr().out)["strategies"][0]["activation_bytes"]

    none, full, selective = (
        activations(),
        activations("--gradient_checkpointing"),
        activations("--selective_checkpointing"),
    )
    assert full < selective < none
    whole = activations("--selective_checkpointing", "--loss", "full")
    fused = activations("--selective_checkpointing", "--fused_cross_entropy")
    tokens, vocab = 2 * 8192, 128256
    assert whole - fused > 12 * tokens * vocab * 0.9  # the 12-byte logits are gone, a chunk remains
    assert (
        whole - selective > 12 * tokens * vocab * 0.8
    )  # TRL's chunked loss: tiles and the fp32 lm_head grad
    assert activations("--selective_checkpointing", "--loss", "fused") == fused
    assert (
        main(
            [
                "estimate",
                "--model",
                "meta-llama/Llama-3.1-8B",
                "--gradient_checkpointing",
                "--selective_checkpointing",
            ]
        )
        == 2
    )  # one or the other
    assert main(["estimate", "--model", "Qwen/Qwen3-30B-A3B"]) == 0
    assert "30,532,122,624 parameters (3,353,032,704 active per token)" in capsys.readouterr().out


def test_a_closed_pipe_is_not_a_traceback():
    """``disttune estimate ... | head -1``: the reader leaves early; no traceback, exit 141."""
    import subprocess
    import sys

    code = "import sys; from disttune.cli import main; sys.exit(main(['estimate', '--num_params', '7e9']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its line
    assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in proc.stderr.read()


def test_allocator_and_run_options(capsys):
    """--allocator fixed adds the cached blocks a smaller earlier step strands; the plan line says which
    allocator; --packing brings SDPA's per-layer mask; --use_liger_kernel and --dtype change the layout."""

    def first(*flags):
        argv = [
            "estimate",
            "--model",
            "meta-llama/Llama-3.2-1B",
            "--num_processes",
            "1",
            "--strategies",
            "ddp",
        ]
        assert main([*argv, "--per_device_train_batch_size", "4", *flags, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["strategies"][0]

    expandable, fixed = first(), first("--allocator", "fixed")
    assert fixed["allocated_bytes"] == expandable["allocated_bytes"]
    assert fixed["reserved_bytes"] > expandable["reserved_bytes"] and "stranded_blocks" in fixed["reserve"]
    packed = first("--packing")
    assert packed["activations"]["attention.mask_bias"] == 2 * 16 * (4 * 2048) ** 2  # 16 layers
    assert first("--use_liger_kernel")["activation_bytes"] < expandable["activation_bytes"]
    assert first("--dtype", "bfloat16")["params_bytes"] == expandable["params_bytes"] // 2
    assert (
        first("--attn_implementation", "flash_attention_2")["activation_bytes"]
        < expandable["activation_bytes"]
    )
    assert main(["estimate", "--model", "meta-llama/Llama-3.2-1B", "--allocator", "fixed"]) == 0
    assert "CUDA allocator: fixed segments" in capsys.readouterr().out
    assert main(["estimate", "--num_params", "1e9", "--allocator", "other"]) == 2
    assert main(["estimate", "--num_params", "1e9", "--loss", "full", "--fused_cross_entropy"]) == 2
