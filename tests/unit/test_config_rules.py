"""Cross-field rules of accelerate YAML configs: one broken input per rule, with its message."""

from __future__ import annotations

import textwrap

import pytest

from disttune.config import check_config
from disttune.config.check import check_files

BASE_DS = """
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
num_processes: 4
num_machines: 1
machine_rank: 0
mixed_precision: bf16
"""


def run(tmp_path, text: str, name: str = "c.yaml", **kwargs):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return check_config(path, **kwargs)


def one(findings, key: str):
    hits = [f for f in findings if f.key == key]
    assert len(hits) == 1, findings
    return hits[0]


def keys(findings) -> set[tuple[str, str]]:
    return {(f.severity, f.key) for f in findings}


def test_clean_deepspeed_config_has_no_finding(tmp_path):
    assert run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stage: 2\n") == []


def test_unknown_top_level_key_is_an_error_with_did_you_mean(tmp_path):
    f = one(run(tmp_path, BASE_DS + "num_proceses: 4\n"), "num_proceses")
    assert f.severity == "error" and "unknown top-level keys" in f.message and "num_processes" in f.fix


def test_unknown_nested_key_is_silently_ignored_so_an_error_and_a_typo_says_so(tmp_path):
    found = run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stgae: 3\n  colour: red\n")
    typo = one(found, "deepspeed_config.zero_stgae")
    assert typo.severity == "error" and "'zero_stage'" in typo.message and "keeps its default" in typo.message
    colour = one(found, "deepspeed_config.colour")
    assert colour.severity == "error" and "never reads it" in colour.message


def test_deepspeed_json_key_in_deepspeed_config_says_where_it_belongs(tmp_path):
    f = one(
        run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stage: 3\n  communication_data_type: fp32\n"),
        "deepspeed_config.communication_data_type",
    )
    assert f.severity == "error" and "deepspeed_config_file" in f.fix and "DeepSpeed JSON key" in f.message


def test_fsdp_keys_without_prefix_are_known(tmp_path):
    text = BASE_DS.replace("DEEPSPEED", "FSDP") + "fsdp_config:\n  version: 2\n  auto_wrap_policy: NO_WRAP\n"
    assert run(tmp_path, text) == []


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("num_machines: '2'", "num_machines", "a quoted value is a string"),
        ("use_cpu: 'false'", "use_cpu", "true or false"),
        ("compute_environment: LOCAL", "compute_environment", "not an allowed value"),
    ],
)
def test_types_and_values(tmp_path, line, key, words):
    text = BASE_DS.replace(f"\n{key}:", f"\n#{key}:") + line + "\n"
    assert words in one(run(tmp_path, text), key).message


def test_unquoted_no_mixed_precision_is_an_error(tmp_path):
    f = one(run(tmp_path, BASE_DS.replace("mixed_precision: bf16", "mixed_precision: no")), "mixed_precision")
    assert f.severity == "error" and f.value is False and "'no'" in f.fix


def test_unquoted_no_distributed_type_runs_as_no(tmp_path):
    # YAML 1.1 reads it as False; accelerate 1.15 runs that as NO (one process), as NO means.
    assert run(tmp_path, "distributed_type: NO\nnum_processes: 1\n") == []
    assert run(tmp_path, "distributed_type: no\n") == []
    f = one(run(tmp_path, "distributed_type: NO\nnum_processes: 8\n"), "num_processes")
    assert f.severity == "error" and "single process" in f.message
    assert (
        "boolean true"
        in one(run(tmp_path, "distributed_type: yes\nnum_processes: 1\n"), "distributed_type").message
    )


def test_unknown_distributed_type(tmp_path):
    f = one(run(tmp_path, "distributed_type: multi_gpu\nnum_processes: 2\n"), "distributed_type")
    assert "MULTI_GPU" in f.fix


def test_missing_distributed_type_and_num_processes(tmp_path):
    assert ("error", "distributed_type") in keys(run(tmp_path, "mixed_precision: bf16\n"))
    # num_processes can come on the launch line: absent is a warning naming the flag
    f = one(run(tmp_path, "distributed_type: MULTI_GPU\n"), "num_processes")
    assert f.severity == "warning" and "--num_processes" in f.message and "--num_processes" in f.fix
    assert run(tmp_path, "distributed_type: MULTI_GPU\n", num_processes=2) == []


def test_no_with_several_processes_is_an_error(tmp_path):
    # accelerate runs one process: the count is silently changed
    f = one(run(tmp_path, "distributed_type: 'NO'\nnum_processes: 8\n"), "num_processes")
    assert f.severity == "error" and "single process" in f.message


def test_processes_must_split_over_machines(tmp_path):
    text = BASE_DS.replace("num_processes: 4", "num_processes: 6").replace(
        "num_machines: 1", "num_machines: 4"
    )
    text += "main_process_ip: 10.0.0.1\ndeepspeed_config:\n  deepspeed_multinode_launcher: standard\n"
    assert "cannot be split evenly" in one(run(tmp_path, text), "num_processes").message


def test_machine_rank_out_of_range(tmp_path):
    f = one(run(tmp_path, BASE_DS.replace("machine_rank: 0", "machine_rank: 1")), "machine_rank")
    assert "0..0" in f.message


def test_multi_node_without_ip_or_rank_warns_naming_the_launch_flags(tmp_path):
    # SLURM-style: the address and the rank come on the launch line
    found = run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 16\nnum_machines: 2\n")
    assert keys(found) == {("warning", "main_process_ip"), ("warning", "machine_rank")}
    assert "--main_process_ip" in one(found, "main_process_ip").fix
    assert "--machine_rank" in one(found, "machine_rank").fix
    # two "machines" on one host (as the multi-node test runs): a note, not a finding
    path = tmp_path / "loop.yaml"
    path.write_text(
        "distributed_type: MULTI_GPU\nnum_processes: 2\nnum_machines: 2\nmachine_rank: 0\n"
        "main_process_ip: 127.0.0.1\n"
    )
    report = check_files([path])
    assert report.findings == [] and "loopback" in report.notes[0]


def test_multi_node_needs_a_valid_port(tmp_path):
    text = "distributed_type: MULTI_GPU\nnum_processes: 16\nnum_machines: 2\nmain_process_port: 70000\n"
    found = run(tmp_path, text)
    assert "TCP port" in one(found, "main_process_port").message
    found = run(tmp_path, text.replace("70000", "0") + "main_process_ip: 10.0.0.1\n")
    assert "random free port" in one(found, "main_process_port").message


def test_gpu_ids_must_be_a_string(tmp_path):
    f = one(run(tmp_path, "distributed_type: 'NO'\nnum_processes: 1\ngpu_ids: 0\n"), "gpu_ids")
    assert ".split" in f.message and "'0'" in f.fix


def test_gpu_ids_are_split_as_accelerate_splits_them(tmp_path):
    # accelerate counts "0,".split(",") as two ids and starts; CUDA then sees GPU 0 alone
    assert run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 1\ngpu_ids: '0,'\n") == []
    # "all" is compared exactly: anything else becomes CUDA_VISIBLE_DEVICES as written
    f = one(run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 2\ngpu_ids: ALL\n"), "gpu_ids")
    assert f.severity == "error" and "CUDA_VISIBLE_DEVICES=ALL" in f.message and f.fix == "write gpu_ids: all"


def test_launch_line_values_absent_warn_null_or_strings_are_errors(tmp_path):
    for key in ("num_processes", "num_machines", "machine_rank"):
        values = {"num_processes": "2", key: "null"}
        text = "distributed_type: MULTI_GPU\n" + "".join(f"{k}: {v}\n" for k, v in values.items())
        f = one(run(tmp_path, text), key)
        assert f.severity == "error" and "null is not accepted" in f.message, key
    f = one(run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: '8'\n"), "num_processes")
    assert f.severity == "error" and "a quoted value is a string" in f.message
    # accelerate's own default for these is null (`accelerate config` writes it): fine
    assert (
        run(
            tmp_path,
            "distributed_type: MULTI_GPU\nnum_processes: 2\nmain_process_ip: null\nmain_process_port: null\n",
        )
        == []
    )
    # a multi-node template leaves address and rank to the launch line: warnings naming the flags
    found = run(tmp_path, "distributed_type: MULTI_GPU\nnum_machines: 2\n")
    assert keys(found) == {
        ("warning", "num_processes"),
        ("warning", "main_process_ip"),
        ("warning", "machine_rank"),
    }


def test_gpu_ids_count_against_processes_per_machine(tmp_path):
    f = one(run(tmp_path, BASE_DS + "gpu_ids: '0,1'\n"), "gpu_ids")
    assert f.severity == "error" and "4 processes per machine but only 2" in f.message
    f = one(run(tmp_path, BASE_DS + "gpu_ids: '0,1,2,3,4,5'\n"), "gpu_ids")
    assert f.severity == "warning" and "stay idle" in f.message
    f = one(run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 1\ngpu_ids: '0'\n"), "gpu_ids")
    assert "fewer than two" in f.message


def test_gpu_ids_ignored_by_deepspeed_multinode_pdsh(tmp_path):
    text = BASE_DS.replace("num_machines: 1", "num_machines: 2").replace(
        "num_processes: 4", "num_processes: 8"
    )
    text += "main_process_ip: 10.0.0.1\ngpu_ids: '0,1,2,3'\ndeepspeed_config:\n  deepspeed_hostfile: /job/hostfile\n"
    f = one(run(tmp_path, text), "gpu_ids")
    assert f.severity == "error" and "not applied" in f.message
    assert (
        run(
            tmp_path,
            text.replace("deepspeed_hostfile: /job/hostfile", "deepspeed_multinode_launcher: standard"),
        )
        == []
    )


def test_deepspeed_pdsh_multinode_needs_hostfile(tmp_path):
    text = BASE_DS.replace("num_machines: 1", "num_machines: 2").replace(
        "num_processes: 4", "num_processes: 8"
    )
    f = one(run(tmp_path, text + "main_process_ip: 10.0.0.1\n"), "deepspeed_config.deepspeed_hostfile")
    assert "--hostfile None" in f.message


def test_zero_stage_range(tmp_path):
    f = one(run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stage: 4\n"), "deepspeed_config.zero_stage")
    assert "not an allowed value" in f.message and "0, 1, 2, 3" in f.fix


def test_param_offload_needs_zero3_and_zero3_flags_are_ignored_below_it(tmp_path):
    text = (
        BASE_DS + "deepspeed_config:\n  zero_stage: 2\n  offload_param_device: cpu\n  zero3_init_flag: true\n"
    )
    found = run(tmp_path, text)
    assert "needs ZeRO-3" in one(found, "deepspeed_config.offload_param_device").message
    f = one(found, "deepspeed_config.zero3_init_flag")
    assert f.severity == "error" and "only applies to ZeRO-3" in f.message


def test_default_stage_is_two_when_missing(tmp_path):
    f = one(
        run(tmp_path, BASE_DS + "deepspeed_config:\n  zero3_save_16bit_model: true\n"),
        "deepspeed_config.zero3_save_16bit_model",
    )
    assert "ZeRO stage 2" in f.message


def test_optimizer_offload_with_stage_zero(tmp_path):
    f = one(
        run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stage: 0\n  offload_optimizer_device: cpu\n"),
        "deepspeed_config.offload_optimizer_device",
    )
    assert "stage 1, 2 or 3" in f.message


def test_nvme_offload_needs_path(tmp_path):
    text = (
        BASE_DS
        + "deepspeed_config:\n  zero_stage: 3\n  offload_param_device: nvme\n  offload_optimizer_device: nvme\n"
    )
    found = run(tmp_path, text)
    assert "missing" in one(found, "deepspeed_config.offload_param_nvme_path").message
    assert "missing" in one(found, "deepspeed_config.offload_optimizer_nvme_path").message


def test_deepspeed_and_fsdp_both_configured(tmp_path):
    f = one(
        run(tmp_path, BASE_DS + "deepspeed_config:\n  zero_stage: 2\nfsdp_config:\n  fsdp_version: 2\n"),
        "fsdp_config",
    )
    assert f.severity == "error" and "both configured" in f.message


def test_deepspeed_config_under_multi_gpu_is_ignored(tmp_path):
    text = BASE_DS.replace("DEEPSPEED", "MULTI_GPU") + "deepspeed_config:\n  zero_stage: 2\n"
    assert "ignored" in one(run(tmp_path, text), "deepspeed_config").message


def test_multi_cpu_with_several_processes_but_no_mpirun_starts_one_process(tmp_path):
    from disttune.config import check_config

    path = tmp_path / "cpu.yaml"
    path.write_text("distributed_type: MULTI_CPU\nnum_processes: 4\nuse_cpu: true\n")
    findings = check_config(path)
    assert [(f.severity, f.key) for f in findings] == [("error", "num_processes")]
    assert "starts a single process, not 4" in findings[0].message
    path.write_text(
        "distributed_type: MULTI_CPU\nnum_processes: 4\nuse_cpu: true\nmpirun_config:\n  mpirun_hostfile: hosts\n"
    )
    assert check_config(path) == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            BASE_DS + "deepspeed_config:\n  gradient_accumulation_steps: 0\n",
            "deepspeed_config.gradient_accumulation_steps",
        ),
        (BASE_DS.replace("num_processes: 4", "num_processes: 0"), "num_processes"),
        (BASE_DS + "deepspeed_config:\n  gradient_clipping: -1.0\n", "deepspeed_config.gradient_clipping"),
        (BASE_DS.replace("num_machines: 1", "num_machines: 0"), "num_machines"),
    ],
)
def test_numbers_below_what_can_run_are_errors(tmp_path, text, key):
    f = one(run(tmp_path, text), key)
    assert f.severity == "error" and "must be at least" in f.message


def test_zero_clipping_means_off_and_is_fine(tmp_path):
    assert run(tmp_path, BASE_DS + "deepspeed_config:\n  gradient_clipping: 0\n") == []


def test_renamed_fsdp_key_names_its_successor_and_the_release(tmp_path):
    text = (
        BASE_DS.replace("DEEPSPEED", "FSDP") + "fsdp_config:\n  fsdp_backward_prefetch_policy: BACKWARD_PRE\n"
    )
    f = one(run(tmp_path, text), "fsdp_config.fsdp_backward_prefetch_policy")
    assert (
        f.severity == "error" and "'fsdp_backward_prefetch'" in f.message and "accelerate 0.26.0" in f.message
    )
    assert f.fix == "rename it to fsdp_backward_prefetch"
    # without the prefix, as accelerate also accepts
    assert (
        one(
            run(tmp_path, text.replace("fsdp_backward_prefetch_policy", "backward_prefetch_policy")),
            "fsdp_config.backward_prefetch_policy",
        ).severity
        == "error"
    )
