"""Resume across layouts and restart records, without launching anything (the launches are in
tests/distributed/test_resume_anywhere.py and test_elastic.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from disttune.errors import UserError
from disttune.train import failure, restarts
from disttune.train.guards import test_faults as read_test_faults
from disttune.train.portable import make_portable, read_portable
from disttune.train.prepare import keep_global_batch, layout_change
from disttune.train.reconcile import GA_ENV, set_accumulation


def test_layout_change_names_source_and_target_or_none():
    zero2x2 = {"strategy": "deepspeed-zero2", "world_size": 2}
    assert layout_change(zero2x2, {"strategy": "deepspeed-zero2", "world_size": 2}) is None
    assert layout_change(zero2x2, {"strategy": "ddp", "world_size": 1}) == "deepspeed-zero2 x2 -> ddp x1"
    assert layout_change(zero2x2, {"strategy": "deepspeed-zero2", "world_size": 4}) == (
        "deepspeed-zero2 x2 -> deepspeed-zero2 x4"
    )
    assert layout_change({}, {"strategy": "ddp", "world_size": 2}) is None  # an old mark: resume natively


def _args(per_device=4, accumulation=1):
    return SimpleNamespace(
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        deepspeed_plugin=None,
    )


def test_global_batch_kept_by_accumulation_when_the_world_size_changes():
    args = _args(4, 1)
    note = keep_global_batch(args, {"global_batch_size": 8, "world_size": 2}, set(), world_size=1)
    assert args.gradient_accumulation_steps == 2
    assert note == "gradient_accumulation_steps 1 -> 2: keeps the checkpoint's global batch 8 = 4 x 1 x 2"
    same = _args(4, 1)
    assert keep_global_batch(same, {"global_batch_size": 8, "world_size": 1}, set(), world_size=2) is None
    old_mark = keep_global_batch(_args(4, 1), {"world_size": 2}, set(), world_size=1)
    assert (
        old_mark.startswith("the checkpoint does not record its global batch") and "4 = 4 x 1 x 1" in old_mark
    )


def test_global_batch_that_cannot_be_kept_is_an_error_with_the_nearest_options():
    with pytest.raises(UserError) as err:
        keep_global_batch(_args(4, 1), {"global_batch_size": 8, "world_size": 2}, set(), world_size=3)
    message = str(err.value)
    assert "cannot keep the global batch on resume" in message and "global batch 8 on 2" in message
    assert "Nearest valid options" in message and "num_processes=3" in message


def test_an_explicit_accumulation_that_changes_the_global_batch_is_refused():
    with pytest.raises(UserError, match="leave --gradient_accumulation_steps out"):
        keep_global_batch(
            _args(4, 4), {"global_batch_size": 8, "world_size": 2}, {"gradient_accumulation_steps"}, 1
        )


def test_set_accumulation_reaches_the_deepspeed_plugin_and_the_launcher_variable():
    plugin = SimpleNamespace(
        gradient_accumulation_steps=1, deepspeed_config={"gradient_accumulation_steps": 1}
    )
    args = SimpleNamespace(gradient_accumulation_steps=1, deepspeed_plugin=plugin)
    environ = {GA_ENV: "1"}
    set_accumulation(args, 4, environ)
    assert (args.gradient_accumulation_steps, plugin.gradient_accumulation_steps) == (4, 4)
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 4 and environ[GA_ENV] == "4"


def _ddp_checkpoint(folder, model, decay_first):
    """What transformers writes for DDP: model.safetensors and torch's AdamW state by parameter index."""
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay_first], "weight_decay": 0.1},
        {"params": [p for n, p in model.named_parameters() if n not in decay_first], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for _ in range(3):
        model(torch.randn(2, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    folder.mkdir()
    save_file({n: p.detach().clone() for n, p in model.state_dict().items()}, folder / "model.safetensors")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    return optimizer


def test_ddp_checkpoint_becomes_portable_by_parameter_name(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    decay = {"0.weight", "1.weight"}
    optimizer = _ddp_checkpoint(tmp_path / "checkpoint-3", model, decay)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    order = [n for n in shapes if n in decay] + [n for n in shapes if n not in decay]
    folder, note = make_portable(
        tmp_path / "checkpoint-3", {"strategy": "ddp", "world_size": 2}, shapes, order
    )
    assert folder == tmp_path / "portable" / "checkpoint-3"
    assert "converted checkpoint-3 (ddp x2) once" in note and "optimizer step 3" in note
    weights, moments, step = read_portable(folder)
    assert step == 3
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert torch.equal(weights[name], param.detach())
        state = optimizer.state[param]
        assert torch.equal(moments[f"exp_avg.{name}"], state["exp_avg"])
        assert torch.equal(moments[f"exp_avg_sq.{name}"], state["exp_avg_sq"])
    assert (folder / "trainer_state.json").read_text() == '{"global_step": 3}'
    again, note = make_portable(tmp_path / "checkpoint-3", {"strategy": "ddp"}, shapes, order)
    assert again == folder and "made earlier" in note
    _, note = make_portable(tmp_path / "checkpoint-3", {"strategy": "ddp", "time": 2.0}, shapes, order)
    assert "converted checkpoint-3" in note  # the checkpoint was marked again since: converted again


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    names = list(shapes)
    _ddp_checkpoint(tmp_path / "checkpoint-3", model, set(names))
    with pytest.raises(UserError, match="no weights for 1 parameter.*2.weight"):
        make_portable(tmp_path / "checkpoint-3", {"strategy": "ddp"}, {**shapes, "2.weight": (1,)}, names)
    with pytest.raises(UserError, match="0.weight has 12 values, this model's has 20"):
        make_portable(tmp_path / "checkpoint-3", {"strategy": "ddp"}, {**shapes, "0.weight": (4, 5)}, names)
    with pytest.raises(UserError, match="optimizer holds 4 parameters, this model trains 3"):
        make_portable(tmp_path / "checkpoint-3", {"strategy": "ddp"}, shapes, names[:3])


def test_fault_injection_can_be_limited_to_one_attempt(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    env = {"DISTTUNE_TEST_FAULT": "sigkill@6:1:0", "TORCHELASTIC_RESTART_COUNT": "0"}
    assert read_test_faults(env) == {("sigkill", 6): True}
    assert read_test_faults({**env, "TORCHELASTIC_RESTART_COUNT": "1"}) == {}
    assert read_test_faults({"DISTTUNE_TEST_FAULT": "sigkill@6:1", "TORCHELASTIC_RESTART_COUNT": "3"}) == {
        ("sigkill", 6): True
    }


def _attempt(monkeypatch, out, attempt, world=2, step=5, ends=None):
    """Leave what attempt ``attempt`` leaves: progress at ``step``, and each rank's end in ``ends`` (its
    failure record, made in step ``step + 1``)."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
    restarts.Progress(out, world)._save(step)
    for rank, (cause, secondary) in (ends or {}).items():
        failure.record(
            failure.Failure(rank, step + 1, f"at step {step + 1}", cause, secondary), out, to_store=False
        )


def test_a_rank_that_left_no_record_is_named_as_killed(tmp_path, monkeypatch):
    _attempt(monkeypatch, tmp_path, 0, ends={0: ("stopped after a collective failed", True)})
    assert failure.describe_attempt(tmp_path, 0) == {
        "attempt": 0,
        "failed_in_step": 6,
        "rank": 1,
        "cause": failure.KILLED,
    }


def test_an_exception_beats_a_secondary_end_and_restarts_are_recorded_once(tmp_path, monkeypatch):
    _attempt(
        monkeypatch,
        tmp_path,
        0,
        step=3,
        ends={
            0: ("received SIGTERM", True),
            1: ("RuntimeError: CUDA error: an illegal memory access", False),
        },
    )
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    line = restarts.note_restart(tmp_path, str(tmp_path / "checkpoint-2"))
    assert line == (
        "restart 1 of 2: rank 1 failed in step 4 (RuntimeError: CUDA error: an illegal memory access); "
        "resuming from checkpoint-2"
    )
    restarts.note_restart(tmp_path, str(tmp_path / "checkpoint-2"))  # every rank's setup may call it
    assert [e["restart"] for e in failure.read_restarts(tmp_path)] == [1]


def test_give_up_summary_says_when_every_attempt_failed_in_the_same_step(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    _attempt(monkeypatch, tmp_path, 0, ends={0: ("received SIGTERM", True)})
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarts.note_restart(tmp_path, None)
    _attempt(monkeypatch, tmp_path, 1, ends={0: ("received SIGTERM", True)})
    assert failure.give_up_summary(tmp_path) == (
        f"rank 1 failed in step 6 in all 2 attempts: {failure.KILLED}"
    )
    assert failure.give_up_summary(tmp_path / "elsewhere") is None


def test_a_new_job_clears_the_records_of_an_old_one_but_a_restart_keeps_them(tmp_path, monkeypatch):
    _attempt(monkeypatch, tmp_path, 0)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarts.clear(tmp_path)
    assert (tmp_path / ".disttune" / "progress.json").is_file()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    restarts.clear(tmp_path)
    assert not (tmp_path / ".disttune").exists()


def test_the_failure_line_names_the_phase_outside_the_training_step():
    """A failure in the held-out evaluation before the first step is not "at step 1"."""
    from types import SimpleNamespace

    where = failure.Where
    where.reset()
    assert (where.describe(), where.step()) == ("before the first step", None)
    where.state = SimpleNamespace(global_step=0)
    assert (where.describe(), where.step()) == ("at step 1", 1)
    with failure.during("in the held-out evaluation"):
        assert (where.describe(), where.step()) == ("before training, in the held-out evaluation", None)
        where.state.global_step = 40
        assert where.describe() == "at step 41, in the held-out evaluation"
        where.ended = True
        assert (where.describe(), where.step()) == (
            "after training (step 40, in the held-out evaluation)",
            40,
        )
    assert where.describe() == "after training (step 40, saving the model)"
    where.reset()  # leave no state for other tests


def test_the_live_first_failure_never_infers_a_silent_rank_from_records_not_yet_written():
    """While the job is ending, a rank that has not written yet is not "killed": only records count."""
    secondary = failure.Failure(1, 4, "at step 4", failure.LOST_PEER, secondary=True, time=2.0)
    assert failure.first_of({1: secondary}, world_size=0) == secondary
    primary = failure.Failure(3, 4, "at step 4", "RuntimeError: boom", time=3.0)
    assert (
        failure.first_of({1: secondary, 3: primary}, world_size=0) == primary
    )  # primary beats earlier secondary
    assert (
        failure.first_of({1: secondary}, world_size=2).cause == failure.KILLED
    )  # the records' rule: rank 0 silent
