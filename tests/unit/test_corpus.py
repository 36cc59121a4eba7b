"""What `disttune check` says about every real-world config in ../shared/corpus (TRL, accelerate,
LLaMA-Factory, axolotl), pinned file by file. The files are only read, never launched.

Why each finding is true (accelerate 1.15, DeepSpeed 0.19.8):
- axolotl *_torch_compile.json: DeepSpeed's `compile` section is a strict pydantic model whose keys are
  DeepCompile settings; `disable` / `backend` are rejected ("Extra inputs are not permitted").
- llamafactory ds_z3_fp8_config.json: DeepSpeed reads no `comms_config` (it is `comms_logger`) and no
  `monitor_config` (monitors are top-level `tensorboard`/`csv_monitor`/...): both are ignored.
- trl examples__alst_ulysses_4gpu.yaml: `seq_parallel_communication_data_type` is a DeepSpeed JSON key;
  under accelerate's deepspeed_config it is copied onto the launcher's arguments and never read.
- trl packaged__single_gpu.yaml: distributed_type "NO" starts one process, so num_processes: 8 is ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from disttune.config.check import check_files

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

E, W = "error", "warning"
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "accelerate/config_yaml_templates/deepspeed.yaml": set(),
    "accelerate/config_yaml_templates/fp8.yaml": set(),
    "accelerate/config_yaml_templates/fsdp.yaml": set(),
    "accelerate/config_yaml_templates/multi_gpu.yaml": set(),
    "accelerate/config_yaml_templates/multi_node.yaml": set(),
    "accelerate/config_yaml_templates/multi_xpu.yaml": set(),
    "accelerate/config_yaml_templates/single_accelerator.yaml": set(),
    "accelerate/deepspeed_config_templates/zero_stage1_config.json": set(),
    "accelerate/deepspeed_config_templates/zero_stage2_config.json": set(),
    "accelerate/deepspeed_config_templates/zero_stage2_offload_config.json": set(),
    "accelerate/deepspeed_config_templates/zero_stage3_config.json": set(),
    "accelerate/deepspeed_config_templates/zero_stage3_offload_config.json": set(),
    "axolotl/zero1.json": set(),
    "axolotl/zero1_torch_compile.json": {(E, "compile.disable"), (E, "compile.backend")},
    "axolotl/zero2.json": set(),
    "axolotl/zero2_torch_compile.json": {(E, "compile.disable"), (E, "compile.backend")},
    "axolotl/zero3.json": set(),
    "axolotl/zero3_bf16.json": set(),
    "axolotl/zero3_bf16_cpuoffload_all.json": set(),
    "axolotl/zero3_bf16_cpuoffload_params.json": set(),
    "llamafactory/ds_z0_config.json": set(),
    "llamafactory/ds_z2_autotp_config.json": set(),
    "llamafactory/ds_z2_config.json": set(),
    "llamafactory/ds_z2_offload_config.json": set(),
    "llamafactory/ds_z3_config.json": set(),
    "llamafactory/ds_z3_fp8_config.json": {(W, "comms_config"), (W, "monitor_config")},
    "llamafactory/ds_z3_offload_config.json": set(),
    "llamafactory/fsdp2_config.yaml": set(),
    "llamafactory/fsdp2_config_qwen35.yaml": set(),
    "llamafactory/fsdp2_config_qwen35_moe.yaml": set(),
    "llamafactory/fsdp_config.yaml": set(),
    "llamafactory/fsdp_config_multiple_nodes.yaml": set(),
    "llamafactory/fsdp_config_offload.yaml": set(),
    "trl/examples__alst_ulysses_4gpu.yaml": {(W, "deepspeed_config.seq_parallel_communication_data_type")},
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
    "trl/packaged__single_gpu.yaml": {(W, "num_processes")},
    "trl/packaged__zero1.yaml": set(),
    "trl/packaged__zero2.yaml": set(),
    "trl/packaged__zero3.yaml": set(),
}

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS} (shared/ beside the repo)")


@needs_corpus
def test_table_covers_every_corpus_file():
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    assert on_disk == set(EXPECTED)


@needs_corpus
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(name):
    report = check_files([CORPUS / name])
    assert {(f.severity, f.key) for f in report.findings} == EXPECTED[name]
    for f in report.findings:
        assert f.message and f.fix


@needs_corpus
def test_accelerate_template_json_is_found_next_to_the_yaml_and_checked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the template's folder: found relative to the YAML instead
    report = check_files([CORPUS / "accelerate/config_yaml_templates/deepspeed.yaml"])
    assert len(report.files) == 2 and report.files[1].endswith("zero_stage1_config.json")
    assert "relative to the YAML's folder" in report.notes[0]
