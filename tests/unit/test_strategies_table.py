"""The strategy table (``disttune/strategies.py``) is the one home of the strategies: the shipped YAMLs, what
``config new`` writes, ``bench``, ``estimate``/``recommend``, the run-folder checks and ``describe`` all agree with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from disttune import strategies
from disttune.errors import UserError
from disttune.strategies import BASELINE_CONFIG, SHIPPED, STRATEGIES

CONFIGS = Path(strategies.__file__).parent / "accelerate_configs"


def test_the_table_and_its_readers_import_no_heavy_library():
    code = (
        "import sys, disttune.strategies, disttune.config.new, disttune.plan, disttune.estimate, disttune.bench\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_names_users_type_are_pinned():
    """A new name (or a renamed one) is a decision: users type these and read them in estimate's JSON."""
    assert strategies.NAMES == (
        "ddp",
        "zero1",
        "zero2",
        "zero3",
        "zero2_offload",
        "zero3_offload_optimizer",
        "zero3_offload_params",
        "zero3_offload",
        "fsdp2",
    )
    assert tuple(s.name for s in SHIPPED) == ("ddp", "zero1", "zero2", "zero3", "zero3_offload", "fsdp2")
    assert strategies.ALIASES == {"zero3_offload_all": "zero3_offload"}


def test_names_and_speed_ranks_are_unique():
    assert len({s.name for s in STRATEGIES}) == len(STRATEGIES)
    assert sorted(s.speed_rank for s in STRATEGIES) == list(range(1, len(STRATEGIES) + 1))
    assert not set(strategies.ALIASES) & set(strategies.NAMES)
    assert set(strategies.ALIASES.values()) <= set(strategies.NAMES)


def test_every_shipped_yaml_is_a_row_or_the_baseline():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert shipped == {s.config_file for s in SHIPPED} | {BASELINE_CONFIG}
    assert (
        Path(__file__).resolve().parents[2] / "accelerate_configs" / BASELINE_CONFIG
    ).is_file()  # the root link


def _facts(data: dict) -> dict:
    """What the table says of a strategy, as an accelerate YAML spells it."""
    ds, fsdp = data.get("deepspeed_config"), data.get("fsdp_config")
    return {
        "distributed_type": data["distributed_type"],
        "zero_stage": ds["zero_stage"] if ds else None,
        "offload_optimizer": (ds["offload_optimizer_device"] != "none") if ds else False,
        "offload_params": (ds["offload_param_device"] != "none")
        if ds
        else bool(fsdp and fsdp["fsdp_offload_params"]),
        "fsdp_version": fsdp["fsdp_version"] if fsdp else None,
    }


def _row_facts(row: strategies.Strategy) -> dict:
    return {
        "distributed_type": row.distributed_type,
        "zero_stage": row.zero_stage,
        "offload_optimizer": row.offload_optimizer,
        "offload_params": row.offload_params,
        "fsdp_version": row.fsdp_version,
    }


@pytest.mark.parametrize("row", SHIPPED, ids=lambda s: s.name)
def test_shipped_yaml_agrees_with_its_row(row):
    text = (CONFIGS / row.config_file).read_text()
    data = yaml.safe_load(text)
    assert _facts(data) == _row_facts(row)
    if data.get("deepspeed_config"):  # offload goes to the CPU in the shipped files, never NVMe
        assert {
            data["deepspeed_config"]["offload_optimizer_device"],
            data["deepspeed_config"]["offload_param_device"],
        } <= {"none", "cpu"}
    head = text.splitlines()[:3]
    assert head[0] == f"# {row.what}" and head[1] == f"# {row.pick_when}"
    assert f"--config_file accelerate_configs/{row.config_file} " in head[2]


@pytest.mark.parametrize("row", SHIPPED, ids=lambda s: s.name)
def test_config_new_writes_what_ships(row):
    from disttune.config.new import NewConfig, render_yaml

    written = render_yaml(NewConfig(row.name, 4), f"accelerate_configs/{row.config_file}")
    shipped = (CONFIGS / row.config_file).read_text()
    assert yaml.safe_load(written) == yaml.safe_load(shipped)  # every key and value, not only the table's
    assert _facts(yaml.safe_load(written)) == _row_facts(row)
    assert written.splitlines()[:3] == shipped.splitlines()[:3]  # what, pick it when, launch


def test_config_new_and_bench_offer_the_shipped_rows():
    from disttune.bench import STRATEGIES as BENCH
    from disttune.bench import config_path
    from disttune.config.new import STRATEGIES as NEW

    assert tuple(BENCH) == NEW == tuple(s.name for s in SHIPPED)
    assert all(config_path(name) == CONFIGS / BENCH[name].config_file for name in BENCH)


@pytest.mark.parametrize("row", STRATEGIES, ids=lambda s: s.name)
def test_estimate_offloads_what_the_row_says(row):
    """Every row has a memory formula, and it puts in host RAM exactly what the row (and its YAML) offloads."""
    from disttune.estimate import memory

    terms = memory.model_state_breakdown(row.name, 10**6, 4, "bf16", persistent_params=10)
    gpu_params = sum(v for k, v in terms.items() if k.startswith("params.") and k != "params.persistent")
    assert (gpu_params == 0) == row.offload_params  # (zero2_offload's CPU bit16 copy is the optimizer's)
    assert any(k.startswith("cpu.optim.") for k in terms) == row.offload_optimizer
    assert not any(k.startswith("optim.") for k in terms) == row.offload_optimizer


def test_the_shipped_offload_file_is_estimated_with_parameters_on_the_cpu():
    from disttune.estimate import memory

    both = memory.summarize(memory.model_state_breakdown("zero3_offload", 8 * 10**6, 8, "bf16"))
    opt = memory.summarize(memory.model_state_breakdown("zero3_offload_optimizer", 8 * 10**6, 8, "bf16"))
    assert both["params"] == 0 and opt["params"] == 2 * 10**6  # bf16 partitions: CPU vs GPU
    assert both["cpu"] == opt["cpu"] + 2 * 10**6


def test_old_names_still_work_and_unknown_ones_are_named():
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate

    model = ModelInfo("x", 10**9)
    old, new = estimate(model, Inputs(), ("zero3_offload_all", "zero3_offload"))
    assert old == new and old.name == "zero3_offload"
    with pytest.raises(UserError, match="unknown zero4, zero5; choose from ddp, zero1"):
        estimate(model, Inputs(), ("zero4", "ddp", "zero5"))


def test_estimate_cli_takes_the_old_name(capsys):
    import json

    from disttune.cli import main

    assert main(["estimate", "--num_params", "1e9", "--strategies", "zero3_offload_all,ddp", "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)["strategies"]] == ["zero3_offload", "ddp"]


def test_recommend_follows_the_speed_rank_and_refuses_a_strategy_without_one():
    from disttune.estimate.recommend import SPEED_ORDER, recommend
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate

    assert SPEED_ORDER == tuple(s.name for s in sorted(STRATEGIES, key=lambda s: s.speed_rank))
    assert (
        SPEED_ORDER[:5] == ("ddp", "zero1", "zero2", "fsdp2", "zero3") and SPEED_ORDER[-1] == "zero3_offload"
    )
    results = estimate(ModelInfo("x", 10**8), Inputs())
    assert recommend(list(reversed(results))).strategy == "ddp"
    with pytest.raises(ValueError, match="'zero9' has no row"):
        recommend([*results, replace(results[0], name="zero9")])


def test_an_estimate_only_row_says_how_to_configure_it():
    from disttune.config.new import NewConfig, render_yaml
    from disttune.estimate.recommend import recommend
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate

    for row in STRATEGIES:
        how = strategies.start_from(row.name)
        assert (how is None) == bool(row.config_file), row.name
        if how:  # applying the change to the named file gives the row's facts
            base = next(s for s in SHIPPED if s.config_file in how)
            data = yaml.safe_load(render_yaml(NewConfig(base.name, 4)))
            for key in ("offload_optimizer_device", "offload_param_device"):
                if f"{key}: " in how:
                    data["deepspeed_config"][key] = how.split(f"{key}: ")[1].split()[0]
            assert _facts(data) == _row_facts(row)
    assert strategies.start_from("zero3_offload_optimizer") == (
        "zero3_offload_optimizer has no shipped config: copy accelerate_configs/deepspeed_zero3.yaml and set "
        "offload_optimizer_device: cpu under deepspeed_config"
    )
    model, inputs = ModelInfo("8b", 8 * 10**9), Inputs(num_processes=8, gpu_memory_gb=24)
    rec = recommend(estimate(model, inputs, ("zero3", "zero3_offload_optimizer")), model, inputs)
    assert (
        rec.strategy == "zero3_offload_optimizer"
        and "copy accelerate_configs/deepspeed_zero3.yaml" in rec.reason
    )


def test_running_setups_map_to_rows_and_checkpoint_layouts():
    assert strategies.identify("MULTI_CPU") == strategies.identify("MULTI_GPU") == "ddp"
    assert strategies.identify("DEEPSPEED", 3, None, True, True) == "zero3_offload"
    assert strategies.identify("DEEPSPEED", 3, None, True, False) == "zero3_offload_optimizer"
    assert strategies.identify("FSDP", None, 2) == "fsdp2"
    assert strategies.identify("NO") is None and strategies.identify("FSDP", None, 2, False, True) is None
    layouts = {s.name: s.checkpoint_layout for s in STRATEGIES}
    assert layouts["ddp"] == "ddp" and layouts["fsdp2"] == "fsdp"
    assert layouts["zero3"] == layouts["zero3_offload"] == "deepspeed-zero3"  # offload resumes either way
    from disttune.train.prepare import current_layout

    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "WORLD_SIZE": "2"}
    assert current_layout(env)["strategy"] == strategies.BY_NAME["zero2"].checkpoint_layout


def _accelerator(distributed_type, deepspeed=None, fsdp=None):
    state = SimpleNamespace(
        distributed_type=f"DistributedType.{distributed_type}",
        deepspeed_plugin=deepspeed,
        fsdp_plugin=fsdp,
        num_processes=2,
        mixed_precision="bf16",
        backend="gloo",
    )
    return SimpleNamespace(state=state, device="cpu")


def test_describe_names_the_row_a_run_matches():
    from disttune.train.distributed import describe

    zero = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    offload = SimpleNamespace(zero_stage=3, deepspeed_config=zero)
    assert describe(_accelerator("DEEPSPEED", deepspeed=offload))["strategy"] == "zero3_offload"
    plain = SimpleNamespace(
        zero_stage=2, deepspeed_config={"zero_optimization": {"offload_optimizer": {"device": "none"}}}
    )
    assert describe(_accelerator("DEEPSPEED", deepspeed=plain))["strategy"] == "zero2"
    fsdp = SimpleNamespace(fsdp_version=2, cpu_offload=type("OffloadPolicy", (), {})())
    info = describe(_accelerator("FSDP", fsdp=fsdp))
    assert info["strategy"] == "fsdp2" and info["fsdp_version"] == 2
    assert describe(_accelerator("MULTI_CPU"))["strategy"] == "ddp"
    assert describe(_accelerator("NO"))["strategy"] is None
