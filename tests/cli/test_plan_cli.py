"""``disttune plan`` in process: exit codes, text and JSON."""

from __future__ import annotations

import json

import pytest

from disttune.cli import main


def test_seed_example_text(capsys):
    rc = main(
        [
            "plan",
            "--num_processes",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "4",
            "--to_num_processes",
            "4",
            "--learning_rate",
            "2e-5",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert (
        "global_batch_size = per_device_train_batch_size x num_processes x gradient_accumulation_steps" in out
    )
    assert "keep the learning rate" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("source", "converted"))]
    assert rows[0][:5] == ["source", "1", "4", "4", "16"]
    assert rows[1][:5] == ["converted", "4", "4", "1", "16"]


def test_json_shape(capsys):
    rc = main(
        [
            "plan",
            "--num_processes",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "4",
            "--to_num_processes",
            "4",
            "--learning_rate",
            "2e-5",
            "--max_length",
            "1024",
            "--num_examples",
            "100",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert len(data["plans"]) == 2
    conv = data["plans"][1]
    assert conv == {
        "num_processes": 4,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 16,
        "learning_rate": 2e-5,
        "tokens_per_step": 16 * 1024,
        "steps_per_epoch": 7,
    }


@pytest.mark.parametrize("rule,factor", [("sqrt", 2.0), ("linear", 4.0)])
def test_forced_per_device_scales_lr(capsys, rule, factor):
    rc = main(
        [
            "plan",
            "--num_processes",
            "2",
            "--global_batch_size",
            "16",
            "--gradient_accumulation_steps",
            "2",
            "--to_num_processes",
            "8",
            "--to_per_device_train_batch_size",
            "8",
            "--learning_rate",
            "1e-4",
            "--lr_scaling",
            rule,
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["plans"][1]["global_batch_size"] == 64
    assert data["plans"][1]["learning_rate"] == pytest.approx(1e-4 * factor)


def test_impossible_conversion_exit_1_with_options(capsys):
    rc = main(
        [
            "plan",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "4",
            "--to_num_processes",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("disttune plan: error:") and "Nearest valid options" in err
    assert "Traceback" not in err


def test_impossible_conversion_json(capsys):
    rc = main(
        [
            "plan",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "4",
            "--to_num_processes",
            "3",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert "error" in data and [o["global_batch_size"] for o in data["options"]] == [15, 18]


@pytest.mark.parametrize(
    "argv",
    [
        [
            "plan",
            "--num_processes",
            "0",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "1",
        ],
        ["plan", "--per_device_train_batch_size", "-2", "--gradient_accumulation_steps", "1"],
        ["plan", "--per_device_train_batch_size", "4"],
        [
            "plan",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "1",
            "--learning_rate",
            "-1",
        ],
        [
            "plan",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "1",
            "--to_per_device_train_batch_size",
            "2",
        ],
    ],
)
def test_bad_inputs_exit_1(capsys, argv):
    assert main(argv) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_argparse_misuse_exit_2(capsys):
    assert main(["plan", "--per_device_train_batch_size", "four"]) == 2
    assert main(["plan", "--lr_scaling", "cubic"]) == 2
