"""What `disttune check` says about every real-world config in ../shared/corpus, pinned file by file, each
checked from its own folder (so relative `deepspeed_config_file` paths resolve as they do for their users).
The files are only read, never launched. Every file not pinned with a finding below must be clean.

Why each finding is true (accelerate 1.15, DeepSpeed 0.19.8):
- axolotl *_torch_compile.json: DeepSpeed's `compile` section is a strict pydantic model whose keys are
  DeepCompile settings; `disable` / `backend` are rejected ("Extra inputs are not permitted").
- llamafactory ds_z3_fp8_config.json: DeepSpeed reads no `comms_config` (it is `comms_logger`) and no
  `monitor_config` (monitors are top-level `tensorboard`/`csv_monitor`/...): both silently ignored.
- trl examples__alst_ulysses_4gpu.yaml: `seq_parallel_communication_data_type` is a DeepSpeed JSON key;
  under accelerate's deepspeed_config it is copied onto the launcher's arguments and never read.
- trl packaged__single_gpu.yaml: distributed_type "NO" starts one process, so num_processes: 8 is ignored.
- realworld, ZeRO-2 with parameter offload (cogvideox-factory deepspeed.yaml, diffusers ds2.yaml and
  dreambooth ds_config_zero2.json, Otter zero2_slurm): parameter offload is a ZeRO-3 feature; under stage 2
  the parameters stay on the GPU.
- realworld diffusers dreambooth accelerate_config.yaml: accelerate refuses `mixed_precision` next to a
  `deepspeed_config_file`; and with its 8 processes the JSON's fixed train_batch_size 2 (accumulation 1)
  means a micro-batch of 0.25, which DeepSpeed asserts against.
- realworld Otter zero3_slurm / ms-swift multi_node: several machines, with the address and the rank left
  to the launch line (SLURM style): warnings naming --main_process_ip / --machine_rank.
- realworld CogVideo configs/zero3_offload.yaml (DeepSpeed JSON saved as .yaml): two keys written twice.
- realworld DeepSpeedExamples (5 files) and InternVL adam_zero1_amp.json: no zero_optimization. Only
  accelerate's DeepSpeedPlugin requires it ('Please specify the ZeRO optimization config'); these files are
  for the `deepspeed` launcher, where DeepSpeed runs without ZeRO. Given alone they are judged as DeepSpeed
  judges them, so it is a warning that says "under accelerate" (it was an error before issue 25); it is an
  error when an accelerate config points to the file. adam_zero1_amp's `log` and imagenet's
  `cuda_visible_devices` are top-level keys DeepSpeed silently ignores.
- Keys DeepSpeed 0.19.8 now refuses outright (runtime/config.py `_REMOVED_TOP_LEVEL_CONFIG_KEYS`, raised as
  DeepSpeedConfigError before anything runs; errors since issue 25): InternVL adam_zero1_amp's `amp`,
  DeepSpeedExamples bing_bert lamb's `sparse_attention`, compression gpt2's `compression_training`.
- Optimizers DeepSpeed 0.19.8 cannot build (errors since issue 25): DeepSpeedExamples 1-bit_adam's
  `OneBitAdam` and InternVL adam_zero3_fp16's `ZeroOneAdam` are neither in its DEEPSPEED_OPTIMIZERS nor
  torch.optim classes, so engine._configure_basic_optimizer stops on `getattr(torch.optim, name)`.
- realworld transformers ds_config_zero3.json: `stage3_gather_fp16_weights_on_model_save`, deprecated in
  DeepSpeed 0.6.0 and still mapped by 0.19.8 (and accelerate saves through DeepSpeed's reading of it): a
  warning naming its successor. Since issue 25 also an error for `reduce_bucket_size: 0`, which
  DeepSpeedZeroConfig declares `gt=0` (pydantic stops the launch).
- Every file with a DeepSpeed `optimizer` or `scheduler` block (warnings since issue 25; the files of
  accelerate's own templates included, and the accelerate YAML that points to one): under HF Trainer the
  block replaces the script's `--optim` / `--lr_scheduler_type` without a word, and an explicit param
  (lr, betas, eps, weight_decay, warmup_max_lr, warmup_num_steps) must equal the script's flag or
  HF Trainer stops ('DeepSpeed config values that mismatch TrainingArguments'). A warning, not an error: the
  files run as written, and without the script's arguments the comparison cannot be made.
- realworld alpaca_farm: `fsdp_backward_prefetch_policy`, renamed to `fsdp_backward_prefetch` in accelerate
  0.26.0 and no longer read by 1.15: the setting is lost.
- realworld Chinese-LLaMA-Alpaca-2 ds_zero2_no_offload.json: fp16.min_loss_scale 1e-10; DeepSpeed's field
  is an integer and its validation refuses the fraction ("Input should be a valid integer").

In CI (CI=true) a missing corpus fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from disttune.cli import main
from disttune.config.check import check_files

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

E, W = "error", "warning"
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "accelerate/config_yaml_templates/deepspeed.yaml": {(W, "optimizer"), (W, "scheduler")},
    "accelerate/config_yaml_templates/fp8.yaml": set(),
    "accelerate/config_yaml_templates/fsdp.yaml": set(),
    "accelerate/config_yaml_templates/multi_gpu.yaml": set(),
    "accelerate/config_yaml_templates/multi_node.yaml": set(),
    "accelerate/config_yaml_templates/multi_xpu.yaml": set(),
    "accelerate/config_yaml_templates/single_accelerator.yaml": set(),
    "accelerate/deepspeed_config_templates/zero_stage1_config.json": {(W, "optimizer"), (W, "scheduler")},
    "accelerate/deepspeed_config_templates/zero_stage2_config.json": {(W, "optimizer"), (W, "scheduler")},
    "accelerate/deepspeed_config_templates/zero_stage2_offload_config.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "accelerate/deepspeed_config_templates/zero_stage3_config.json": {(W, "optimizer"), (W, "scheduler")},
    "accelerate/deepspeed_config_templates/zero_stage3_offload_config.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "axolotl/zero1.json": set(),
    "axolotl/zero1_torch_compile.json": {(E, "compile.backend"), (E, "compile.disable")},
    "axolotl/zero2.json": set(),
    "axolotl/zero2_torch_compile.json": {(E, "compile.backend"), (E, "compile.disable")},
    "axolotl/zero3.json": set(),
    "axolotl/zero3_bf16.json": set(),
    "axolotl/zero3_bf16_cpuoffload_all.json": set(),
    "axolotl/zero3_bf16_cpuoffload_params.json": set(),
    "llamafactory/ds_z0_config.json": set(),
    "llamafactory/ds_z2_autotp_config.json": set(),
    "llamafactory/ds_z2_config.json": set(),
    "llamafactory/ds_z2_offload_config.json": set(),
    "llamafactory/ds_z3_config.json": set(),
    "llamafactory/ds_z3_fp8_config.json": {(E, "comms_config"), (E, "monitor_config")},
    "llamafactory/ds_z3_offload_config.json": set(),
    "llamafactory/fsdp2_config.yaml": set(),
    "llamafactory/fsdp2_config_qwen35.yaml": set(),
    "llamafactory/fsdp2_config_qwen35_moe.yaml": set(),
    "llamafactory/fsdp_config.yaml": set(),
    "llamafactory/fsdp_config_multiple_nodes.yaml": set(),
    "llamafactory/fsdp_config_offload.yaml": set(),
    "realworld/InternLM__xtuner/xtuner/configs/deepspeed/deepspeed_zero1.json": set(),
    "realworld/InternLM__xtuner/xtuner/configs/deepspeed/deepspeed_zero2_offload.json": set(),
    "realworld/InternLM__xtuner/xtuner/configs/deepspeed/deepspeed_zero3_offload.json": set(),
    "realworld/Luodian__Otter/pipeline/accelerate_configs/accelerate_config_ddp.yaml": set(),
    "realworld/Luodian__Otter/pipeline/accelerate_configs/accelerate_config_fsdp.yaml": set(),
    "realworld/Luodian__Otter/pipeline/accelerate_configs/accelerate_config_zero2_slurm.yaml": {
        (E, "deepspeed_config.offload_param_device")
    },
    "realworld/Luodian__Otter/pipeline/accelerate_configs/accelerate_config_zero3.yaml": set(),
    "realworld/Luodian__Otter/pipeline/accelerate_configs/accelerate_config_zero3_slurm.yaml": {
        (W, "machine_rank"),
        (W, "main_process_ip"),
    },
    "realworld/OpenGVLab__InternVL/internvl_chat/zero_stage1_config.json": {(W, "optimizer")},
    "realworld/OpenGVLab__InternVL/internvl_chat/zero_stage3_config.json": {(W, "optimizer")},
    "realworld/OpenGVLab__InternVL/internvl_chat/zero_stage3_config_100b_1e7_offload.json": {
        (W, "optimizer")
    },
    "realworld/OpenGVLab__InternVL/internvl_g/zero_stage2_config.json": {(W, "scheduler")},
    "realworld/OpenGVLab__InternVL/segmentation/zero_configs/adam_zero1_amp.json": {
        (E, "amp"),
        (E, "log"),
        (W, "optimizer"),
        (W, "zero_optimization"),
    },
    "realworld/OpenGVLab__InternVL/segmentation/zero_configs/adam_zero3_fp16.json": {
        (E, "optimizer.type"),
        (W, "optimizer"),
    },
    "realworld/OpenLMLab__MOSS-RLHF/accelerate_config.yaml": set(),
    "realworld/QwenLM__Qwen/finetune/ds_config_zero2.json": {(W, "optimizer"), (W, "scheduler")},
    "realworld/QwenLM__Qwen/finetune/ds_config_zero3.json": {(W, "optimizer"), (W, "scheduler")},
    "realworld/RLHFlow__Online-RLHF/configs/deepspeed_stage3.json": set(),
    "realworld/RLHFlow__Online-RLHF/configs/zero0.yaml": set(),
    "realworld/THUDM__ChatGLM3/finetune_demo/configs/ds_zero_2.json": set(),
    "realworld/THUDM__ChatGLM3/finetune_demo/configs/ds_zero_3.json": {(W, "optimizer")},
    "realworld/THUDM__CogVideo/finetune/accelerate_config.yaml": {(W, "optimizer"), (W, "scheduler")},
    "realworld/THUDM__CogVideo/finetune/configs/zero2.yaml": {(W, "optimizer"), (W, "scheduler")},
    "realworld/THUDM__CogVideo/finetune/configs/zero3_offload.yaml": {
        (E, "zero_optimization.stage3_param_persistence_threshold"),
        (E, "zero_optimization.stage3_prefetch_bucket_size"),
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/a-r-r-o-w__cogvideox-factory/accelerate_configs/compiled_1.yaml": set(),
    "realworld/a-r-r-o-w__cogvideox-factory/accelerate_configs/deepspeed.yaml": {
        (E, "deepspeed_config.offload_param_device")
    },
    "realworld/a-r-r-o-w__cogvideox-factory/accelerate_configs/uncompiled_2.yaml": set(),
    "realworld/allenai__open-instruct/configs/ds_configs/stage2_no_offloading_accelerate.conf": set(),
    "realworld/allenai__open-instruct/configs/ds_configs/stage3_no_offloading.conf": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/allenai__open-instruct/configs/ds_configs/stage3_offloading_accelerate.conf": set(),
    "realworld/bigcode-project__starcoder/chat/deepspeed_z3_config_bf16.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/deepseek-ai__DeepSeek-Coder/finetune/configs/ds_config_zero3.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/haotian-liu__LLaVA/scripts/zero2.json": set(),
    "realworld/haotian-liu__LLaVA/scripts/zero3.json": set(),
    "realworld/haotian-liu__LLaVA/scripts/zero3_offload.json": {(W, "optimizer"), (W, "scheduler")},
    "realworld/huggingface__alignment-handbook/recipes/accelerate_configs/deepspeed_zero1.yaml": set(),
    "realworld/huggingface__alignment-handbook/recipes/accelerate_configs/deepspeed_zero2.yaml": set(),
    "realworld/huggingface__alignment-handbook/recipes/accelerate_configs/fsdp.yaml": set(),
    "realworld/huggingface__diffusers/examples/dreambooth/accelerate_config.yaml": {
        (E, "mixed_precision"),
        (E, "train_batch_size"),
        (E, "zero_optimization.offload_param.device"),
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/huggingface__diffusers/examples/dreambooth/ds_config_zero2.json": {
        (E, "zero_optimization.offload_param.device"),
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/huggingface__diffusers/examples/hunyuanvideo/accelerate_config_machine_single.yaml": set(),
    "realworld/huggingface__diffusers/examples/hunyuanvideo/zero_stage2_config.json": set(),
    "realworld/huggingface__diffusers/examples/research_projects/flux_lora_quantization/accelerate.yaml": set(),
    "realworld/huggingface__diffusers/examples/research_projects/flux_lora_quantization/ds2.yaml": {
        (E, "deepspeed_config.offload_param_device")
    },
    "realworld/huggingface__open-r1/recipes/accelerate_configs/fsdp.yaml": set(),
    "realworld/huggingface__peft/examples/causal_language_modeling/accelerate_ds_zero3_cpu_offload_config.yaml": set(),
    "realworld/huggingface__peft/examples/int8_training/config.yaml": set(),
    "realworld/huggingface__peft/examples/sft/configs/deepspeed_config.yaml": set(),
    "realworld/huggingface__peft/examples/sft/configs/deepspeed_config_z3_qlora.yaml": set(),
    "realworld/huggingface__peft/examples/sft/configs/fsdp_config.yaml": set(),
    "realworld/huggingface__peft/examples/sft/configs/fsdp_config_qlora.yaml": set(),
    "realworld/huggingface__peft/tests/training/fsdp2_config.yaml": set(),
    "realworld/huggingface__peft/tests/training/tp_config.yaml": set(),
    "realworld/huggingface__transformers/tests/deepspeed/ds_config_zero2.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/huggingface__transformers/tests/deepspeed/ds_config_zero3.json": {
        (E, "zero_optimization.reduce_bucket_size"),
        (W, "optimizer"),
        (W, "scheduler"),
        (W, "zero_optimization.stage3_gather_fp16_weights_on_model_save"),
    },
    "realworld/lm-sys__FastChat/playground/deepspeed_config_s2.json": set(),
    "realworld/lm-sys__FastChat/playground/deepspeed_config_s3.json": set(),
    "realworld/microsoft__DeepSpeedExamples/compression/gpt2/config/ds_config_W8A8_Qgroup64_fp16.json": {
        (E, "compression_training"),
        (W, "optimizer"),
    },
    "realworld/microsoft__DeepSpeedExamples/training/BingBertSquad/deepspeed_bsz24_config.json": {
        (W, "optimizer"),
        (W, "zero_optimization"),
    },
    "realworld/microsoft__DeepSpeedExamples/training/autotuning/hf/dsconfigs/ds_config_fp16_z2.json": set(),
    "realworld/microsoft__DeepSpeedExamples/training/autotuning/hf/dsconfigs/ds_config_tune.json": {
        (W, "zero_optimization")
    },
    "realworld/microsoft__DeepSpeedExamples/training/autotuning/hf/dsconfigs/ds_config_z3.json": set(),
    "realworld/microsoft__DeepSpeedExamples/training/bing_bert/1-bit_adam/nccl/deepspeed_bsz4k_onebitadam_config_seq128_nccl.json": {
        (E, "optimizer.type"),
        (W, "optimizer"),
        (W, "zero_optimization"),
    },
    "realworld/microsoft__DeepSpeedExamples/training/bing_bert/deepspeed_bsz64k_lamb_config_seq128.json": {
        (E, "sparse_attention"),
        (W, "optimizer"),
        (W, "zero_optimization"),
    },
    "realworld/microsoft__DeepSpeedExamples/training/data_efficiency/gpt_finetuning/config/ds_config_gpt_base_random_ltd.json": {
        (W, "optimizer")
    },
    "realworld/microsoft__DeepSpeedExamples/training/imagenet/config/ds_fp16_z1_config.json": {
        (E, "cuda_visible_devices"),
        (W, "optimizer"),
    },
    "realworld/microsoft__DeepSpeedExamples/training/pipeline_parallelism/ds_config.json": {
        (W, "optimizer"),
        (W, "zero_optimization"),
    },
    "realworld/modelscope__ms-swift/examples/train/multi-gpu/fsdp_qlora/fsdp_offload.json": set(),
    "realworld/modelscope__ms-swift/examples/train/multi-node/accelerate/multi_node.yaml": {
        (W, "machine_rank")
    },
    "realworld/modelscope__ms-swift/swift/config/zero0.json": set(),
    "realworld/modelscope__ms-swift/swift/config/zero2_offload.json": set(),
    "realworld/modelscope__ms-swift/swift/config/zero3.json": set(),
    "realworld/modelscope__ms-swift/swift/config/zero3_offload.json": set(),
    "realworld/princeton-nlp__SimPO/accelerate_configs/deepspeed_zero3.yaml": set(),
    "realworld/tatsu-lab__alpaca_farm/examples/accelerate_configs/rlhf_ppo_fsdp_llama_4gpu.yaml": {
        (E, "fsdp_config.fsdp_backward_prefetch_policy")
    },
    "realworld/tatsu-lab__stanford_alpaca/configs/default_offload_opt_param.json": {
        (W, "optimizer"),
        (W, "scheduler"),
    },
    "realworld/ymcui__Chinese-LLaMA-Alpaca-2/scripts/training/ds_zero2_no_offload.json": {
        (E, "fp16.min_loss_scale")
    },
    "trl/examples__alst_ulysses_4gpu.yaml": {(E, "deepspeed_config.seq_parallel_communication_data_type")},
    "trl/examples__context_parallel_2gpu.yaml": set(),
    "trl/examples__deepspeed_zero1.yaml": set(),
    "trl/examples__deepspeed_zero2.yaml": set(),
    "trl/examples__deepspeed_zero3.yaml": set(),
    "trl/examples__fsdp1.yaml": set(),
    "trl/examples__fsdp2.yaml": set(),
    "trl/examples__multi_gpu.yaml": set(),
    "trl/examples__single_gpu.yaml": set(),
    "trl/packaged__fsdp1.yaml": set(),
    "trl/packaged__fsdp2.yaml": set(),
    "trl/packaged__multi_gpu.yaml": set(),
    "trl/packaged__single_gpu.yaml": {(E, "num_processes")},
    "trl/packaged__zero1.yaml": set(),
    "trl/packaged__zero2.yaml": set(),
    "trl/packaged__zero3.yaml": set(),
}


def require_corpus(path: Path, in_ci: bool) -> Path:
    """``path`` if it is a folder; else fail in CI (a silent skip would hide every test below) or skip."""
    if not path.is_dir():
        if in_ci:
            pytest.fail(f"corpus not found at {path}: CI must check out shared/ beside the repository")
        pytest.skip(f"corpus not found at {path} (shared/ beside the repo)")
    return path


@pytest.fixture
def corpus() -> Path:
    return require_corpus(CORPUS, IN_CI)


def test_a_missing_corpus_fails_in_ci_and_skips_elsewhere(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="CI must check out shared/"):
        require_corpus(tmp_path / "absent", in_ci=True)
    with pytest.raises(pytest.skip.Exception):
        require_corpus(tmp_path / "absent", in_ci=False)


def test_table_covers_every_corpus_file(corpus):
    on_disk = {
        p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file() and p.suffix != ".md"
    }
    assert on_disk == set(EXPECTED)


def test_every_realworld_file_is_listed_in_its_sources(corpus):
    sources = (corpus / "realworld" / "SOURCES.md").read_text()
    for name in EXPECTED:
        if name.startswith("realworld/"):
            assert f"| {name.removeprefix('realworld/')} |" in sources, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(corpus, name, monkeypatch):
    path = corpus / name
    monkeypatch.chdir(path.parent)  # as `disttune check FILE` run in the file's folder
    report = check_files([path.name])
    assert {(f.severity, f.key) for f in report.findings} == EXPECTED[name]
    for f in report.findings:
        assert f.message and f.fix


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_exit_code_follows_the_pinned_findings(corpus, name, monkeypatch, capsys):
    path = corpus / name
    monkeypatch.chdir(path.parent)
    code = main(["check", path.name])
    out, err = capsys.readouterr()
    assert code == (1 if any(s == E for s, _ in EXPECTED[name]) else 0), out
    assert "Traceback" not in out + err


def test_file_kind_is_decided_by_content(corpus):
    conf = corpus / "realworld/allenai__open-instruct/configs/ds_configs/stage3_no_offloading.conf"
    assert "read as a DeepSpeed config" in check_files([conf]).notes[0]
    as_json = corpus / "realworld/modelscope__ms-swift/examples/train/multi-gpu/fsdp_qlora/fsdp_offload.json"
    assert "read as an accelerate config" in check_files([as_json]).notes[0]


def test_accelerate_template_json_is_found_next_to_the_yaml_and_checked(corpus, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the template's folder: the launch would not find it from here
    yaml_path = corpus / "accelerate/config_yaml_templates/deepspeed.yaml"
    report = check_files([yaml_path])
    assert len(report.files) == 2 and report.files[1].endswith("zero_stage1_config.json")
    where = [f for f in report.findings if f.key == "deepspeed_config.deepspeed_config_file"]
    assert [f.severity for f in where] == ["error"] and f"launch from {yaml_path.parent}" in where[0].fix
