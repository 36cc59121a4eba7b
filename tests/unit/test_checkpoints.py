"""Completion marks, rotation and ``--resume_from_checkpoint`` resolution, on plain folders."""

from __future__ import annotations

import pytest

from disttune.errors import UserError
from disttune.train.checkpoints import (
    MARKER,
    is_complete,
    new_run_id,
    newest_complete,
    resolve_resume,
    rotate,
    write_marker,
)


def _checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * step)
    if complete:
        write_marker(folder, {"world_size": 2, "strategy": "ddp"})
    return folder


def test_newest_complete_skips_incomplete_and_sorts_by_step_not_name(tmp_path):
    for step, done in ((4, True), (12, True), (16, False), (8, True)):
        _checkpoint(tmp_path, step, done)
    assert newest_complete(tmp_path).name == "checkpoint-12"


def test_a_truncated_file_after_marking_makes_it_incomplete(tmp_path):
    folder = _checkpoint(tmp_path, 4)
    (folder / "model.safetensors").write_bytes(b"x")
    assert not is_complete(folder)


def test_rotate_keeps_newest_complete_and_drops_stale_incomplete(tmp_path):
    for step, done in ((2, True), (4, False), (6, True), (8, True), (10, False)):
        _checkpoint(tmp_path, step, done)
    deleted = sorted(p.name for p in rotate(tmp_path, keep=1))
    assert deleted == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-8"]


def test_resolve_latest_true_and_paths(tmp_path):
    assert resolve_resume("latest", tmp_path)[0] is None  # nothing yet: fresh start
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_resume("true", tmp_path)
    _checkpoint(tmp_path, 4)
    broken = _checkpoint(tmp_path, 8, complete=False)
    path, note = resolve_resume("latest", tmp_path)
    assert path.endswith("checkpoint-4") and "skipped incomplete: checkpoint-8" in note
    with pytest.raises(UserError, match=f"incomplete checkpoint .*no intact {MARKER}"):
        resolve_resume(str(broken), tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert resolve_resume(None, tmp_path) == (None, None)


def test_run_id_says_where_it_resumed():
    assert new_run_id("/x/checkpoint-40").endswith("-from-step40")
    assert "from" not in new_run_id(None)
