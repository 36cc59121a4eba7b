"""Model families under every shipped strategy, 2 CPU processes through the real ``accelerate launch``.

Each family (``disttune.train.families``: Llama, Qwen2, Gemma 2, GPT-2, Mistral, and the mixtures of
experts Qwen2-MoE, Qwen3-MoE and Mixtral) is built from its transformers config at a toy size, saved as a
local HF folder and launched with ``--model_name_or_path <folder>``: fp32, 3 steps, the built-in data, same
seed. Each run must exit 0 (its own final check compares ``final/`` with the gathered trained weights),
answer the held-out questions before and after training and report the evaluation loss (the model run
outside the training step, under the strategy), write each tied weight once, and agree with the same family
under ZeRO-3 (losses, gradient norms, final weights), as the built-in Llama does in ``test_strategies.py``.
The same non-training paths per family in one process (with ``--merge_lora``): tests/unit/test_family_paths.py.

Before the save fix, Qwen2 with tied embeddings failed under ZeRO-2 and FSDP2 and GPT-2 under FSDP2
(the tied weight was written twice and the element count blamed ZeRO-3 gathering). CI runs the cut
``CI_CUT``; the full matrix is behind the ``families`` marker (``make test-families``).
"""

from __future__ import annotations

import pytest
from launching import SHORT_RUN, explain, launch, read_metrics, read_summary

from disttune.strategies import SHIPPED
from disttune.train.families import FAMILIES

pytestmark = pytest.mark.distributed

# config name -> (distributed_type on CPU, zero_stage), from the strategy table (DDP reports MULTI_CPU on CPU)
STRATEGIES = {
    row.config_file.removesuffix(".yaml"): (
        "MULTI_CPU" if row.distributed_type == "MULTI_GPU" else row.distributed_type,
        row.zero_stage,
    )
    for row in SHIPPED
}
REFERENCE = "deepspeed_zero3"
# CI's share (8 launches, about 42 CPU-seconds each): every family that differs from the built-in Llama
# (test_strategies.py runs that one under every strategy; Mistral has its layout) under ZeRO-3, the
# reference each cell is compared with, plus the three cells that failed before the save fix (Qwen2-tied
# under ZeRO-2 and FSDP2, GPT-2 under FSDP2). `make test-families` runs all 48 (8 families x 6 configs).
CI_CUT = {(family, REFERENCE) for family in ("qwen2", "gemma2", "gpt2", "qwen2_moe", "qwen3_moe")}
CI_CUT |= {("qwen2", "deepspeed_zero2"), ("qwen2", "fsdp2"), ("gpt2", "fsdp2")}
# Every cell also runs the model outside the training step: greedy answers to 8 held-out questions before
# and after training (generation under the strategy: ZeRO-3 gathers, FSDP2 synced_gpus, MoE routers) and
# the evaluation loss on them at the end (transformers' evaluation loop).
HELD_OUT = ("--heldout_examples", "8", "--eval_strategy", "steps", "--eval_steps", "3")
REL_TOL = 1e-5  # as test_strategies.py: float noise from reduction order; a real difference is >> 1e-4


def _case(family: str, config: str):
    marks = () if (family, config) in CI_CUT else (pytest.mark.families,)
    return pytest.param(family, config, marks=marks, id=f"{family}-{config}")


CASES = [_case(family, config) for family in FAMILIES for config in STRATEGIES]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(family, config)``: the output folder of that launch, launched once per module on first use."""
    from disttune.train.families import family_checkpoint

    root = tmp_path_factory.mktemp("families")
    done: dict = {}

    def launched(family: str, config: str):
        if (family, config) not in done:
            model = family_checkpoint(family, root / "models")
            out = root / f"{family}-{config}"
            result = launch(config, out, *SHORT_RUN, *HELD_OUT, "--model_name_or_path", str(model))
            done[family, config] = (out, result)
        out, result = done[family, config]
        assert result.returncode == 0, f"{family} under {config}: {explain(result)}"
        return out, result

    return launched


@pytest.mark.parametrize(("family", "config"), CASES)
def test_family_trains_saves_and_agrees_with_zero3(run, family, config):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from disttune.train.save import tied_weight_keys

    out, result = run(family, config)
    summary = read_summary(out)
    assert (summary["distributed_type"], summary["zero_stage"], summary["world_size"]) == (
        *STRATEGIES[config],
        2,
    )
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    evaluation = summary["eval"]
    assert evaluation["before"]["step"] == 0 and evaluation["after"]["step"] == 3, evaluation
    assert evaluation["before"]["examples"] == evaluation["after"]["examples"] == 8
    assert evaluation["after"]["token_accuracy"] is not None and evaluation["after"]["eval_loss"] > 0

    # final/ holds each tied weight once, loads, and has the model's parameter count (tied ones once).
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    with safe_open(str(out / "final" / "model.safetensors"), framework="pt") as handle:
        saved = set(handle.keys())
    tied = tied_weight_keys(model)
    assert bool(tied) == FAMILIES[family].settings["tie_word_embeddings"]
    assert not saved & set(tied) and set(tied.values()) <= saved
    assert sum(p.numel() for p in model.parameters()) == summary["num_params"]

    if config == REFERENCE:  # it learns: the held-out loss falls (the training batches differ step to step)
        assert evaluation["after"]["eval_loss"] < evaluation["before"]["eval_loss"], evaluation
        return
    reference_out, _ = run(family, REFERENCE)
    for ref, rec in zip(read_metrics(reference_out), records, strict=True):
        assert rec["loss"] == pytest.approx(ref["loss"], rel=REL_TOL), (family, config, rec["step"])
        assert rec["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (family, config, rec["step"])
    reference = AutoModelForCausalLM.from_pretrained(reference_out / "final").state_dict()
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in state.items():
        assert torch.allclose(tensor, reference[name], rtol=1e-4, atol=1e-6), (family, config, name)


@pytest.mark.parametrize("config", [REFERENCE, "fsdp2"])
def test_moe_blocks_become_zero3_leaf_modules_only_under_zero3(run, config):
    out, result = run("qwen2_moe", config)
    note = "disttune: ZeRO-3: 2 mixture-of-experts blocks (Qwen2MoeSparseMoeBlock) are DeepSpeed leaf modules"
    assert (note in result.stdout) == (config == REFERENCE), result.stdout[-3000:]
    noted = any("mixture-of-experts" in n for n in read_summary(out)["notes"])  # kept with the run, too
    assert noted == (config == REFERENCE)


@pytest.mark.families
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_resumes_across_layouts(family, tmp_path):
    """Resume anywhere, per family: a checkpoint written by ZeRO-2 on 2 processes, continued by DDP on 1 (the
    README's own pair), converted once to the portable form. The full proof of the same steps' losses is
    test_resume_anywhere.py's, on the built-in Llama; here each family's tensors (tied, fused MoE experts,
    Conv1D) must survive the conversion and load into the other layout."""
    from launching import short_run

    from disttune.train.families import family_checkpoint

    model = str(family_checkpoint(family, tmp_path / "models"))
    run = short_run(4, "--save_steps", "2", "--heldout_examples", "0", "--model_name_or_path", model)
    first = launch("deepspeed_zero2", tmp_path / "src", *run)
    assert first.returncode == 0, explain(first)
    checkpoint = tmp_path / "src" / "checkpoint-2"
    resumed = launch(
        "multi_gpu_ddp", tmp_path / "dst", *run, "--resume_from_checkpoint", str(checkpoint), num_processes=1
    )
    assert resumed.returncode == 0, explain(resumed)
    assert "resuming across layouts: deepspeed-zero2 x2 -> ddp x1" in resumed.stdout, explain(resumed)
    assert [r["step"] for r in read_metrics(tmp_path / "dst")] == [3, 4]
