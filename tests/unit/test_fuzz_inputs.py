"""Fuzzing the config loader and the command-line parsers: no input yields a traceback or a hang.

Allowed outcomes: a result, a ``UserError`` (what, where, fix), or argparse's ``SystemExit`` (code 2,
0 for ``--help``). Anything else escaping is a bug. Bounded: at most 150 examples each, 2 s per example.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disttune.cli import main as cli_main
from disttune.config import check_config, load_accelerate_config
from disttune.errors import UserError

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = [
    "distributed_type",
    "num_processes",
    "mixed_precision",
    "deepspeed_config",
    "zero_stage",
    "deepspeed_config_file",
    "fsdp_config",
    "gradient_accumulation_steps",
    "machine_rank",
    "num_machines",
    "offload_optimizer_device",
    "main_process_port",
    "use_cpu",
    "gpu_ids",
    "bogus key",
    "fsdp_version",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "MULTI_GPU",
            "DEEPSPEED",
            "FSDP",
            "bf16",
            "fp16",
            "no",
            "auto",
            "cpu",
            "all",
            "nvme",
            "/nonexistent.json",
        ]
    ),
)
NESTED = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
)
CONFIG_DICTS = st.dictionaries(st.sampled_from(KEYS), NESTED, max_size=8)
YAMLISH = st.text(alphabet=string.printable + "äé\u2028\t", max_size=300)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@FUZZ
@given(text=YAMLISH)
def test_config_loader_on_random_text(tmp_path, text):
    path = _write(tmp_path, "config.yaml", text)
    try:
        data = load_accelerate_config(path)
        assert isinstance(data, dict)
    except UserError as exc:
        assert str(exc)
    try:
        check_config(path)
    except UserError:
        pass


@FUZZ
@given(data=CONFIG_DICTS, as_json=st.booleans())
def test_check_config_on_random_nested_dicts(tmp_path, data, as_json):
    text = json.dumps(data) if as_json else yaml.safe_dump(data)
    path = _write(tmp_path, "config.json" if as_json else "config.yaml", text)
    try:
        findings = check_config(path)
        assert isinstance(findings, list)
    except UserError as exc:
        assert str(exc)


CLI_WORDS = [
    "check",
    "plan",
    "estimate",
    "config",
    "new",
    "--strategy",
    "ddp",
    "zero2",
    "zero3",
    "fsdp2",
    "--num_processes",
    "--model",
    "7b",
    "tiny",
    "--json",
    "--help",
    "--global_batch_size",
    "--mixed_precision",
    "bf16",
    "-1",
    "0",
    "3",
    "1e9",
    "nan",
    "--per_device_train_batch_size",
    "--gpus",
    "--output",
    "list",
]
ARGV = st.lists(st.sampled_from(CLI_WORDS) | st.text(alphabet=string.printable, max_size=10), max_size=8)


@FUZZ
@given(command=st.sampled_from(["check", "plan", "estimate", "config"]), argv=ARGV)
def test_cli_on_random_argv(tmp_path, command, argv, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # `config new --output` may write: only ever into the test's folder
    try:
        code = cli_main([command, *argv])
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    assert code in (0, 1, 2), (command, argv, code)


TRAIN_WORDS = [
    "--max_steps",
    "--learning_rate",
    "--per_device_train_batch_size",
    "--save_steps",
    "--output_dir",
    "--resume_from_checkpoint",
    "latest",
    "true",
    "--lr_scaling",
    "sqrt",
    "--hang_dump_s",
    "--skip_nonfinite_steps",
    "--config",
    "--save_total_limit",
    "-3",
    "0",
    "1e-3",
    "abc",
    "nan",
    "--bf16",
]


@pytest.fixture(scope="module")
def train_parser_env(tmp_path_factory):
    """Parse in a clean, non-distributed environment (imports done once, outside the deadline)."""
    from disttune.train.args import parse_args

    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    folder = tmp_path_factory.mktemp("train-fuzz")
    parse_args(["--output_dir", str(folder / "out")])  # the first parse imports TRL/transformers: not timed
    yield folder
    os.environ.update(saved)


@settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    argv=st.lists(st.sampled_from(TRAIN_WORDS) | st.text(alphabet=string.printable, max_size=8), max_size=6)
)
def test_training_script_parser_on_random_argv(train_parser_env, argv, capsys):
    from disttune.train.args import parse_args

    try:
        parse_args(["--output_dir", str(train_parser_env / "out"), *argv])
    except UserError as exc:
        assert str(exc)
    except SystemExit as exc:
        assert exc.code in (0, 2), (argv, exc.code)
    capsys.readouterr()


@st.composite
def _alias_yaml(draw):
    """Documents of anchors whose bodies nest and refer to earlier (or their own) anchors."""
    lines = []
    for i in range(draw(st.integers(1, 10))):
        refs = draw(st.lists(st.integers(0, i), min_size=1, max_size=12))  # i itself: a self-reference
        nest = draw(st.integers(0, 80))
        body = ", ".join(f"*a{r}" if r < i or draw(st.booleans()) else "x" for r in refs)
        lines.append(f"k{i}: &a{i} " + "[" * nest + f"[{body}]" + "]" * nest)
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=_alias_yaml())
def test_aliases_and_nesting_are_bounded(tmp_path, text):
    import time

    path = _write(tmp_path, "aliases.yaml", text)
    start = time.process_time()  # CPU seconds of this process: a loaded machine does not make it flaky
    try:
        check_config(path)
    except UserError:
        pass
    assert time.process_time() - start < 1.0
