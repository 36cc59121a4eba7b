"""The training script's own promises: data formats, LoRA, one source of truth for batch settings,
LR scaling, the CPU precision fallback. Runs through the real ``accelerate launch``."""

from __future__ import annotations

import json

import pytest
from launching import SHORT_RUN, explain, launch, no_traceback_from_our_code, read_metrics, read_summary

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(fmt: str, n: int = 40) -> list[dict]:
    out = []
    for i in range(n):
        question, answer = f"What is {i} + {i}?", str(2 * i)
        if fmt == "messages":
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
        elif fmt == "prompt_completion":
            out.append({"prompt": question + " ", "completion": answer})
        else:
            out.append({"text": f"{question} {answer}"})
    return out


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "text"])
def test_each_data_format_trains_from_a_local_file(tmp_path, cache, fmt):
    data = _write_jsonl(tmp_path / f"{fmt}.jsonl", _records(fmt))
    out = tmp_path / "out"
    result = launch(
        "single_gpu", out, *SHORT_RUN, "--dataset_name", str(data), num_processes=1, cache_dir=cache
    )
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert summary["data_format"] == fmt
    assert len(read_metrics(out)) == 3


def test_a_file_in_no_known_format_is_refused_naming_its_columns(tmp_path, cache):
    data = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}] * 4)
    result = launch(
        "single_gpu",
        tmp_path / "out",
        *SHORT_RUN,
        "--dataset_name",
        str(data),
        num_processes=1,
        cache_dir=cache,
    )
    assert result.returncode != 0
    assert "no supported columns found (columns: answer, question)" in result.stderr
    assert no_traceback_from_our_code(result)


def test_eval_split_reports_the_evaluation_loss_before_and_after_under_zero3(tmp_path, cache):
    """A held-out fraction of the user's file, evaluated by transformers (--eval_strategy steps
    --eval_steps 2) and in any case before the first step and after the last; sharded, every rank takes part."""
    data = _write_jsonl(tmp_path / "qa.jsonl", _records("messages"))
    out = tmp_path / "out"
    result = launch(
        "deepspeed_zero3",
        out,
        *SHORT_RUN,
        "--dataset_name",
        str(data),
        "--eval_split",
        "0.25",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        cache_dir=cache,
    )
    assert result.returncode == 0, explain(result)
    evaluation = read_summary(out)["eval"]
    assert evaluation["data"] == f"{data}: 10 held-out examples"
    assert evaluation["before"]["step"] == 0 and evaluation["after"]["step"] == 3
    assert evaluation["after"]["eval_loss"] < evaluation["before"]["eval_loss"]
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    # at the start, at step 2 (--eval_steps) and at the end
    assert len([r for r in logged if "eval_loss" in r]) == 3, logged
    assert "did it learn? eval loss" in result.stdout


@pytest.mark.parametrize("config", ["multi_gpu_ddp", "deepspeed_zero3"])
def test_lora_run_saves_adapter_and_merged_model(tmp_path, cache, config):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = launch(
        config,
        out,
        *SHORT_RUN,
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--merge_lora",
        cache_dir=cache,
    )
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    # LoRA on q_proj (128->128) and v_proj (128->64) of 4 layers, r=4: 4 * 4 * ((128+128) + (128+64))
    assert summary["trainable_params"] == 4 * 4 * (256 + 192)
    assert (out / "final" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "final_merged")
    assert sum(p.numel() for p in merged.parameters()) == summary["num_params"] - summary["trainable_params"]
    # The trained adapter is in the merged weights: q_proj moved, layers without LoRA did not.
    base = load_file(str(next(cache.glob("tiny-llama-seed42")) / "model.safetensors"))
    state = merged.state_dict()
    assert (
        state["model.layers.0.self_attn.q_proj.weight"] - base["model.layers.0.self_attn.q_proj.weight"]
    ).abs().max() > 0
    assert (state["model.layers.0.mlp.up_proj.weight"] == base["model.layers.0.mlp.up_proj.weight"]).all()


def _ds_config(tmp_path, accumulation: int) -> str:
    """A ZeRO-2 accelerate config (in tmp_path) whose deepspeed_config sets the accumulation."""
    path = tmp_path / "zero2_ga.yaml"
    path.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_processes: 2\nmachine_rank: 0\n"
        "num_machines: 1\nmixed_precision: 'no'\nmain_process_ip: 127.0.0.1\nuse_cpu: false\n"
        f"deepspeed_config:\n  zero_stage: 2\n  gradient_accumulation_steps: {accumulation}\n  gradient_clipping: 0.5\n"
    )
    return str(path)


def test_config_accumulation_and_clipping_apply_when_the_script_sets_none(tmp_path, cache):
    out = tmp_path / "out"
    result = launch(_ds_config(tmp_path, 2), out, *SHORT_RUN, cache_dir=cache)
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert summary["gradient_accumulation_steps"] == 2
    assert summary["max_grad_norm"] == 0.5
    assert summary["global_batch_size"] == 4 * 2 * 2


def test_conflicting_accumulation_stops_naming_both_places(tmp_path, cache):
    out = tmp_path / "out"
    result = launch(
        _ds_config(tmp_path, 2), out, *SHORT_RUN, "--gradient_accumulation_steps", "4", cache_dir=cache
    )
    assert result.returncode != 0
    assert (
        "gradient_accumulation_steps is 4 on the command line but deepspeed_config.gradient_accumulation_steps is 2"
        in result.stderr
    )
    assert "zero2_ga.yaml" in result.stderr  # the config file is named
    assert no_traceback_from_our_code(result)
    assert not (out / "metrics.jsonl").exists()


def test_a_precision_flag_contradicting_the_launch_stops_naming_both_places(tmp_path, cache):
    out = tmp_path / "out"
    result = launch("deepspeed_zero2", out, *SHORT_RUN, "--bf16", mixed_precision="no", cache_dir=cache)
    assert result.returncode != 0
    assert "the script is given --bf16 but the launch resolved mixed_precision 'no'" in result.stderr
    assert "fix: drop --bf16" in result.stderr
    assert no_traceback_from_our_code(result)
    assert not (out / "metrics.jsonl").exists()


def test_a_deepspeed_json_that_pins_precision_and_batch_values_is_followed(tmp_path, cache):
    """A DeepSpeed JSON decides what it pins (accelerate refuses mixed_precision beside a deepspeed_config_file
    and exports none of the JSON's values): bf16.enabled, the micro batch, accumulation and clipping are
    adopted by the script. Before, it kept its own ('no', 16, 1, 1.0) and the Trainer stopped with
    "ds bf16.enabled=True vs hf bf16=False" and three more mismatches, though `disttune check` passed."""
    (tmp_path / "ds.json").write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 2,
                "gradient_clipping": 0.5,
                "bf16": {"enabled": True},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    config = tmp_path / "zero2_json.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_processes: 2\nmachine_rank: 0\n"
        "num_machines: 1\nmain_process_ip: 127.0.0.1\nuse_cpu: false\n"
        f"deepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
    )
    out = tmp_path / "out"
    args = ("--max_steps", "3", "--logging_steps", "1", "--max_length", "64")  # no batch flags: the JSON's
    result = launch(str(config), out, *args, mixed_precision=None, cache_dir=cache)
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert (summary["mixed_precision"], summary["zero_stage"]) == ("bf16", 2), summary
    assert (summary["per_device_train_batch_size"], summary["gradient_accumulation_steps"]) == (4, 2)
    assert (summary["max_grad_norm"], summary["global_batch_size"]) == (0.5, 4 * 2 * 2)


def test_sqrt_lr_scaling_and_fp16_fallback_on_cpu(tmp_path, cache):
    out = tmp_path / "out"
    result = launch(
        "single_gpu",
        out,
        *SHORT_RUN,
        "--learning_rate",
        "0.001",
        "--lr_scaling",
        "sqrt",
        "--base_global_batch_size",
        "1",
        "--fp16",  # agrees with the launch: accepted, and falls back to bf16 with it
        num_processes=1,
        mixed_precision="fp16",
        cache_dir=cache,
    )
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert summary["learning_rate"] == pytest.approx(0.001 * 4**0.5)  # global batch 4 vs base 1
    assert summary["mixed_precision"] == "bf16"
    assert any("fp16 needs a GPU" in note for note in summary["notes"])
    assert "global batch            4 = 4 x 1 x 1" in result.stdout


def test_recipe_file_and_a_local_model_folder(tmp_path, cache):
    """``--config recipe.yaml`` sets the arguments (the command line still wins); a local HF folder loads."""
    from disttune.train.tiny import tiny_checkpoint

    local_model = tiny_checkpoint(5, tmp_path / "models")  # any local folder with config.json + weights
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {local_model}\nmax_steps: 2\nlogging_steps: 1\nper_device_train_batch_size: 2\n"
        "learning_rate: 0.01\nmax_length: 48\n"
    )
    out = tmp_path / "out"
    result = launch(
        "single_gpu",
        out,
        "--config",
        str(recipe),
        "--learning_rate",
        "0.02",
        num_processes=1,
        cache_dir=cache,
    )
    assert result.returncode == 0, explain(result)
    summary = read_summary(out)
    assert summary["global_step"] == 2
    assert summary["per_device_train_batch_size"] == 2
    assert summary["learning_rate"] == 0.02  # the command line overrides the recipe
    assert summary["max_length"] == 48
