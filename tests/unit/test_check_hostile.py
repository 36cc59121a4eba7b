"""Hostile config text: every reader refuses it within a second, in one line saying what and where.

The shapes: YAML nested 5,000 levels (flow and block style), a self-referencing alias, a "billion laughs"
file (nine levels of aliases, nine references each: a few hundred bytes), JSON nested 5,000 levels, and a
file larger than any config. The readers: `disttune check`, `disttune doctor`, `disttune launch` (its
pre-flight check), and the training script's `--config` recipe reader.
"""

from __future__ import annotations

import time

import pytest

from disttune import doctor
from disttune.cli import main
from disttune.config import load_accelerate_config
from disttune.config.bounded import MAX_BYTES
from disttune.errors import UserError


def _laughs() -> str:
    lines = [f"l0: &l0 [{','.join(['lol'] * 9)}]"]
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


SHAPES = {
    "deep_flow.yaml": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    "deep_block.yaml": ("- " * 5000 + "x\n", "nested more than"),
    "self_alias.yaml": ("a: &a [*a, *a]\n", "points into the collection that holds it"),
    "laughs.yaml": (_laughs(), "aliases expand to more than"),
    "deep.json": ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than"),
    "huge.yaml": ("a: 1\n" * (MAX_BYTES // 4), "larger than a config can be"),
}


@pytest.fixture(params=sorted(SHAPES))
def hostile(request, tmp_path):
    name = request.param
    text, words = SHAPES[name]
    path = tmp_path / name
    path.write_text(text)
    return path, words


def test_the_laughs_file_is_small():
    assert len(_laughs()) < 500


def _timed(call):
    """The call's result and the CPU seconds this process spent on it (other processes' load does not count)."""
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def test_loader_refuses_in_one_line(hostile):
    path, words = hostile
    with pytest.raises(UserError) as info:
        _timed(lambda: load_accelerate_config(path))
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_check_refuses_within_a_second(hostile, capsys):
    path, words = hostile
    code, seconds = _timed(lambda: main(["check", str(path)]))
    out, err = capsys.readouterr()
    assert code == 1 and seconds < 1.0, seconds
    assert words in out and "Traceback" not in out + err


def test_doctor_refuses_within_a_second(hostile, monkeypatch, tmp_path, capsys):
    path, words = hostile
    monkeypatch.setattr(doctor, "probe_deepspeed", lambda: {"accelerator": "cpu", "cpu_adam": True})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    checks, seconds = _timed(lambda: doctor.config_checks(str(path))[1])
    assert seconds < 1.0 and [c.status for c in checks] == ["fail"] and words in checks[0].detail


def test_doctor_reads_a_hostile_default_config_with_the_same_bounds(hostile, tmp_path):
    path, words = hostile
    (tmp_path / "hf" / "accelerate").mkdir(parents=True)
    (tmp_path / "hf" / "accelerate" / "default_config.yaml").write_text(path.read_text())
    check, seconds = _timed(lambda: doctor.check_default_config({"HF_HOME": str(tmp_path / "hf")}))
    assert seconds < 1.0 and check.status == "warn" and "cannot read it" in check.detail


def test_launch_refuses_before_starting_anything(hostile, tmp_path, capsys):
    path, words = hostile
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('started')\n")
    code, seconds = _timed(lambda: main(["launch", str(path), "--", str(script), "--max_steps", "1"]))
    out, err = capsys.readouterr()
    assert code == 1 and seconds < 1.0
    assert words in err and "refusing to launch" in err and "Traceback" not in out + err


def test_training_recipe_reader_refuses_within_a_second(hostile):
    from disttune.train.args import explicit_names

    path, words = hostile
    with pytest.raises(UserError) as info:
        _timed(lambda: explicit_names(["--config", str(path)]))
    assert words in str(info.value) and str(info.value).startswith("--config ")


def test_aliases_within_bounds_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "base: &base {zero_stage: 2, offload_optimizer_device: none}\n"
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config: *base\n"
    )
    assert load_accelerate_config(path)["deepspeed_config"] == {
        "zero_stage": 2,
        "offload_optimizer_device": "none",
    }


def test_reading_is_bounded_in_time_too(tmp_path, monkeypatch):
    from disttune.config import bounded

    monkeypatch.setattr(bounded, "MAX_SECONDS", 0.0)
    path = tmp_path / "slow.yaml"
    path.write_text("".join(f"k{i}: [1, 2]\n" for i in range(300)))
    with pytest.raises(UserError, match="reading took longer than 0 s"):
        load_accelerate_config(path)
