"""`disttune bench` in process: user mistakes exit 1 with a message, misuse exits 2; no run is started."""

from __future__ import annotations

from disttune.cli import main


def test_unknown_strategy(tmp_path, capsys):
    assert main(["bench", "--strategies", "ddp,zero9", "--output_dir", str(tmp_path)]) == 1
    assert "zero9" in capsys.readouterr().err


def test_bad_numbers_are_reported_together(tmp_path, capsys):
    assert main(["bench", "--max_steps", "0", "--num_processes", "0", "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--max_steps" in err and "--num_processes" in err


def test_output_dir_is_required():
    assert main(["bench"]) == 2
