"""Where a training step's time goes: our trainer against plain TRL's, profiled in one process on this machine.

    python benchmarks/profile_step.py --steps 30

Builds both trainers as ``tests/unit/test_step_syncs.py`` does (same tiny model, data and settings, no
logging during the profiled steps), runs ``--steps`` steps of each under ``cProfile`` after 5 warm-up steps,
and prints per step: the wall time, the time disttune adds (its callbacks, guard and hooks, with the torch
operations they call), and the disttune functions that cost the most. On a CPU this is the
Python overhead per step (what a GPU cannot hide when the step is launch-bound); the GPU's own side is in
benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "unit")]

WARMUP = 5


def _ours(out: Path, steps: int):
    from test_step_syncs import ARGS

    from disttune.train.build import build_trainer
    from disttune.train.settings import resolve

    argv = ["--output_dir", str(out), "--heldout_examples", "0"]
    for key, value in {**ARGS, "max_steps": WARMUP + steps}.items():
        argv += [f"--{key}", str(value)]
    return build_trainer(resolve(argv)).trainer


def _plain(out: Path, steps: int):
    from datasets import Dataset
    from test_step_syncs import ARGS
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from disttune.train.args import SCRIPT_DEFAULTS
    from disttune.train.data import builtin_examples
    from disttune.train.tiny import tiny_checkpoint

    config = {k: v for k, v in SCRIPT_DEFAULTS.items() if k != "model_name_or_path"}
    config.update(ARGS, max_steps=WARMUP + steps, output_dir=str(out), assistant_only_loss=True)
    config["include_num_input_tokens_seen"] = "non_padding"
    path = str(tiny_checkpoint(config["seed"]))
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype="float32"),
        args=SFTConfig(**config),
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=Dataset.from_list(builtin_examples(seed=config["seed"])),
    )


def profile(trainer) -> tuple[float, pstats.Stats]:
    """Profile the steps after the warm-up; returns (wall seconds per step, stats)."""
    from transformers import TrainerCallback

    profiler = cProfile.Profile()
    clock = {}

    class Window(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == WARMUP:
                clock["start"] = time.perf_counter()
                profiler.enable()

        def on_train_end(self, args, state, control, **kwargs):
            profiler.disable()
            clock["end"] = time.perf_counter()

    trainer.add_callback(Window())
    trainer.train()
    steps = trainer.state.global_step - WARMUP
    return (clock["end"] - clock["start"]) / steps, pstats.Stats(profiler)


def ours_share(stats: pstats.Stats, steps: int) -> tuple[float, list[tuple[float, str]]]:
    """Seconds per step that disttune adds: for each disttune function entered from outside disttune (a
    callback, a hook, an override), its cumulative time (the torch operations it calls included) minus the
    time of the library method of the same name it wraps (``super().compute_loss``...): nothing counted twice."""
    wrapped: dict[tuple, float] = {}
    for (_, _, name), (_, _, _, _, callers) in stats.stats.items():
        for caller, (_, _, _, cumulative) in callers.items():
            if "/disttune/" in caller[0] and caller[2] == name:
                wrapped[caller] = wrapped.get(caller, 0.0) + cumulative
    rows = []
    for func, (_, _, _, cumulative, callers) in stats.stats.items():
        file, line, name = func
        if "/disttune/" in file and not any("/disttune/" in caller[0] for caller in callers):
            rows.append(((cumulative - wrapped.get(func, 0.0)) / steps, f"{Path(file).name}:{line} {name}"))
    return sum(t for t, _ in rows), sorted(rows, reverse=True)[:8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    for name, build in (("plain TRL", _plain), ("ours", _ours)):
        per_step, stats = profile(build(tmp / name.replace(" ", "_"), args.steps))
        own, top = ours_share(stats, args.steps)
        print(f"{name}: {per_step * 1e3:.1f} ms per step, {own * 1e3:.2f} ms of it added by disttune")
        for seconds, where in top if own else ():
            print(f"    {seconds * 1e3:7.3f} ms  {where}")


if __name__ == "__main__":
    main()
