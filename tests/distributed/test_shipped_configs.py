"""Every shipped config as users launch it: its own precision (bf16), only the process count changed.

``accelerate launch --config_file accelerate_configs/<cfg>.yaml --num_processes 2 07_distributed_training.py
--max_steps 5 --output_dir DIR``: nothing else is added, so this is what the README promises. Before the
precision fix every DeepSpeed config died at start here ("ds bf16.enabled=True vs hf bf16=False").

The strategies are then compared with each other in bf16 (``test_strategies.py`` does the same in fp32 to
1e-5). The tolerance is bf16's, not float noise: bf16 keeps 8 significant bits (relative rounding 2^-8 =
0.4% per operation), and the strategies round in different places: DeepSpeed converts the weights
themselves to bf16 (and keeps an fp32 master copy), while DDP and FSDP keep fp32 weights and autocast the
matmuls. Measured after 5 steps against DDP: loss within 1.6e-4 relative (ZeRO-1/2/3, offload) and 8.5e-4
(FSDP2); final weights within 0.0052 (about one bf16 rounding step of a weight near 1). The bounds are 3e-3
and 0.008. A run that computes a different update fails them: the single-process run (global batch 16
instead of 32) is 7.2e-3 off in loss and 0.0104 in weights, and the last test checks that it is caught.
"""

from __future__ import annotations

import pytest
import yaml
from launching import CONFIGS, explain, launch, read_metrics, read_summary

pytestmark = pytest.mark.distributed

SHIPPED = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
STEPS = "5"  # the default logging_steps is 5: one logged loss, at the last step
BF16_LOSS_REL = 3e-3
BF16_WEIGHT_ATOL = 0.008  # final weights: two bf16 rounding steps of a weight near 1


# CI launches five of the seven; ZeRO-2 and ZeRO-3 are in `make test-full` here, because the README tier
# already runs both as written (the seed's commands: their own precision, the config's 4 processes).
IN_FULL_ONLY = ("deepspeed_zero2", "deepspeed_zero3")


def _params(configs):
    return [pytest.param(c, marks=pytest.mark.full) if c in IN_FULL_ONLY else c for c in configs]


class _Runs(dict):
    """``runs[config]``: ``(output folder, completed launch)``, launched on first use, once per module."""

    def __init__(self, root, cache):
        super().__init__()
        self.root, self.cache = root, cache

    def __missing__(self, config):
        out = self.root / config
        result = launch(config, out, "--max_steps", STEPS, mixed_precision=None, cache_dir=self.cache)
        self[config] = (out, result)
        return self[config]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _Runs(tmp_path_factory.mktemp("shipped"), tmp_path_factory.mktemp("cache"))


def _ok(runs, config):
    out, result = runs[config]
    assert result.returncode == 0, explain(result)
    return out


def test_the_shipped_configs_are_all_covered():
    assert SHIPPED == [
        "deepspeed_zero1",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "deepspeed_zero3_offload",
        "fsdp2",
        "multi_gpu_ddp",
        "single_gpu",
    ]


@pytest.mark.parametrize("config", _params(SHIPPED))
def test_shipped_config_runs_in_its_own_precision(runs, config):
    summary = read_summary(_ok(runs, config))
    shipped = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())
    assert summary["mixed_precision"] == shipped["mixed_precision"] == "bf16"
    assert summary["world_size"] == (1 if shipped["distributed_type"] == "NO" else 2)
    assert summary["global_step"] == 5
    assert "notes" in summary and not any("fall" in note for note in summary["notes"]), summary["notes"]


def _deviation(runs, config) -> tuple[float, float]:
    """(relative loss difference at the last step, largest absolute final-weight difference) vs DDP."""
    from transformers import AutoModelForCausalLM

    reference, other = read_metrics(_ok(runs, "multi_gpu_ddp")), read_metrics(_ok(runs, config))
    assert [r["step"] for r in other] == [r["step"] for r in reference] == [5]
    loss_rel = abs(other[-1]["loss"] / reference[-1]["loss"] - 1)
    expected = AutoModelForCausalLM.from_pretrained(_ok(runs, "multi_gpu_ddp") / "final").state_dict()
    final = AutoModelForCausalLM.from_pretrained(_ok(runs, config) / "final").state_dict()
    assert final.keys() == expected.keys()
    return loss_rel, max((final[k].float() - t.float()).abs().max().item() for k, t in expected.items())


@pytest.mark.parametrize("config", _params(c for c in SHIPPED if c not in ("multi_gpu_ddp", "single_gpu")))
def test_strategies_agree_in_bf16(runs, config):
    loss_rel, weights = _deviation(runs, config)
    assert loss_rel <= BF16_LOSS_REL, (config, loss_rel)
    assert weights <= BF16_WEIGHT_ATOL, (config, weights)


def test_the_bf16_bounds_catch_a_different_update(runs):
    """One process trains a global batch of 16, not 32: a different update, which the bounds must see."""
    assert read_summary(_ok(runs, "single_gpu"))["global_batch_size"] == 16
    loss_rel, weights = _deviation(runs, "single_gpu")
    assert loss_rel > BF16_LOSS_REL or weights > BF16_WEIGHT_ATOL, (loss_rel, weights)
