"""``disttune bench``: the same job under each strategy, measured, next to ``disttune estimate``'s prediction.

Each run goes through the real ``accelerate launch`` with a shipped config, the training script, the
same data, seed and global batch. Read back from each run's ``run_summary.json`` / ``metrics.jsonl``:
tokens/s, peak memory, model-state bytes measured from the live tensors (``train/measure.py``) and the
loss curve. Written: ``bench.json`` (``runs``), ``bench.md`` (the table) and ``bench.png`` (plots).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from disttune.errors import UserError
from disttune.run_folder import RunFolder, read_jsonl
from disttune.strategies import SHIPPED, resolve

# The strategies with a shipped accelerate config (disttune/strategies.py); each is estimated under its own name.
STRATEGIES = {s.name: s for s in SHIPPED}
# variant -> extra training-script arguments (a free default is shown by measuring it, not asserted)
VARIANTS = {
    "default": [],
    "fused_adamw": ["--optim", "adamw_torch_fused"],
    "packing": ["--packing", "true"],  # TRL's BFD packing, padding-free batches
    "liger": ["--use_liger_kernel", "true"],  # only when liger-kernel is installed
}
SCRIPT = "07_distributed_training.py"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_path(strategy: str) -> Path:
    """The shipped accelerate config of ``strategy`` (package data)."""
    return Path(__file__).parent / "accelerate_configs" / STRATEGIES[strategy].config_file


def find_script(script: str | None = None) -> Path:
    """The training script: ``script`` if given, else ``07_distributed_training.py`` in the cwd or the repo."""
    candidates = (
        [Path(script)] if script else [Path.cwd() / SCRIPT, Path(__file__).resolve().parents[2] / SCRIPT]
    )
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"training script not found (looked for {', '.join(map(str, candidates))}).\n"
        f"  fix: run from the repository root or pass --script path/to/{SCRIPT}."
    )


def parse_strategies(text: str) -> list[str]:
    """``"ddp,zero2"`` -> ``["ddp", "zero2"]``; unknown names raise a ``UserError`` naming the choices."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError(f"--strategies: unknown (none given); choose from {', '.join(STRATEGIES)}.")
    return resolve(names, tuple(STRATEGIES))


def launch_command(
    config: str | Path,
    script: Path,
    out_dir: Path,
    num_processes: int,
    mixed_precision: str | None,
    script_args: list[str],
) -> list[str]:
    """The ``accelerate launch`` argv of one run (localhost rendezvous on a fresh free port).

    ``config``: a name of ``STRATEGIES`` or the path of an accelerate config file. ``mixed_precision``
    None keeps the config's own.
    """
    config_file = config_path(config) if config in STRATEGIES else Path(config)
    precision = ["--mixed_precision", mixed_precision] if mixed_precision else []
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        *precision,
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        str(script),
        "--output_dir",
        str(out_dir),
        *script_args,
    ]


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` pairs from a run's ``metrics.jsonl``."""
    return [
        (r["step"], r["loss"]) for r in read_jsonl(RunFolder(run_dir).metrics) if r.get("loss") is not None
    ]


def max_loss_deviation(losses: list[tuple[int, float]], reference: list[tuple[int, float]]) -> float | None:
    """Largest |loss - reference loss| over the steps both logged (None without common steps)."""
    ref = dict(reference)
    diffs = [abs(loss - ref[step]) for step, loss in losses if step in ref]
    return max(diffs) if diffs else None


def estimated_state(
    strategy: str,
    model_dir: str,
    num_processes: int,
    mixed_precision: str,
    per_device_batch: int,
    max_length: int,
) -> dict:
    """``disttune estimate``'s per-rank model-state terms for the same setup, their sums, and its GPU totals.

    ``total``: model states (what the live-tensor measurement counts); ``gpu_total_bytes``: the whole peak
    with activations, buffers and the CUDA runtime; ``reserved_bytes``: what ``torch.cuda.max_memory_reserved``
    should read. Parameters count a tied embedding once; ``active_params`` is what one token runs through
    (a mixture of experts' k of E experts), the figure for FLOPs.
    """
    from disttune.estimate.memory import summarize
    from disttune.estimate.models import count_params
    from disttune.estimate.presets import resolve_model
    from disttune.estimate.strategies import Inputs, ModelInfo, estimate_strategy

    spec = resolve_model(model_dir)
    counts = count_params(spec)
    inputs = Inputs(
        num_processes=num_processes,
        mixed_precision=mixed_precision,
        per_device_train_batch_size=per_device_batch,
        max_length=max_length,
    )
    est = estimate_strategy(strategy, ModelInfo(spec.name, counts.total, spec), inputs)
    sums = summarize(est.terms)
    return {
        "total": sum(est.terms.values()),
        "terms": est.terms,
        "buffers": est.buffers,
        **sums,
        "gpu_total_bytes": est.total_bytes,
        "reserved_bytes": est.reserved_bytes,
        "num_params": counts.total,
        "active_params": counts.active,
    }


def summarize_run(strategy: str, run_dir: Path, estimate: dict, wall_s: float) -> dict:
    """One ``bench.json`` record from a finished run's files."""
    summary = json.loads(RunFolder(run_dir).summary.read_text())
    states = [s for s in summary.get("model_state_bytes") or [] if s]
    worst = max(states, key=lambda s: s["total"] - s["other"]) if states else None
    measured = worst["params"] + worst["grads"] + worst["optimizer"] if worst else None
    est = estimate["total"]
    reserved = [r for r in summary.get("peak_memory_reserved_bytes") or [] if r is not None] or None
    return {
        "strategy": strategy,
        "estimate_strategy": strategy,  # the same row of disttune/strategies.py
        "ran_as": summary.get(
            "strategy"
        ),  # the table row the running job matched (train.distributed.describe)
        "world_size": summary["world_size"],
        "mixed_precision": summary["mixed_precision"],
        "global_batch_size": summary["global_batch_size"],
        "steps": summary["global_step"],
        "tokens_per_second": summary.get("tokens_per_second"),
        "tokens_per_second_per_rank": summary.get("tokens_per_second_per_rank"),
        "mfu": summary.get("mfu"),
        "peak_memory_bytes": max(summary["peak_memory_bytes"]),
        "peak_memory_kind": summary["peak_memory_kind"],
        "measured_model_state_bytes": measured,
        "measured_by_category": {k: worst[k] for k in ("params", "grads", "optimizer", "other", "cpu_bytes")}
        if worst
        else None,
        "measured_moment": worst.get("moment") if worst else None,
        "measured_sources": worst.get("sources") if worst else None,
        "estimated_model_state_bytes": est,
        "estimated_by_category": {k: estimate[k] for k in ("params", "grads", "optimizer", "cpu")},
        "estimated_terms": estimate["terms"],
        "estimate_rel_error": round((est - measured) / measured, 4) if measured else None,
        # on a GPU: torch.cuda.max_memory_reserved per rank, when the run wrote it, beside the estimate's figure
        "peak_memory_reserved_bytes": reserved,
        "estimated_reserved_bytes": estimate.get("reserved_bytes"),
        "estimated_gpu_total_bytes": estimate.get("gpu_total_bytes"),
        "reserved_rel_error": (
            round((estimate["reserved_bytes"] - max(reserved)) / max(reserved), 4)
            if reserved and estimate.get("reserved_bytes")
            else None
        ),
        "estimated_num_params": estimate.get("num_params"),
        "estimated_active_params": estimate.get("active_params"),
        "final_loss": summary.get("final_loss"),
        "losses": read_losses(run_dir),
        "wall_seconds": round(wall_s, 1),
    }


def _launch_one(cmd: list[str], run_dir: Path, timeout: float) -> int | str:
    """One launch with its output in ``<run_dir>/launch.log``; the exit code, or "timeout"."""
    with (run_dir / "launch.log").open("w") as fh:
        try:
            return subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UserError(f"--variant {variant}: choose from {', '.join(VARIANTS)}.")
    if variant == "liger":
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise UserError("--variant liger needs liger-kernel installed (pip install liger-kernel).")


def bench_script_args(
    model_dir: str,
    max_steps: int,
    per_device_batch: int,
    max_length: int,
    seed: int,
    variant: str,
    logging_steps=1,
) -> list[str]:
    """The training script's arguments of every bench run (the same for each strategy)."""
    args = [
        "--model_name_or_path",
        model_dir,
        "--max_steps",
        str(max_steps),
        "--logging_steps",
        str(logging_steps),
    ]
    args += ["--per_device_train_batch_size", str(per_device_batch), "--max_length", str(max_length)]
    return args + ["--seed", str(seed), *VARIANTS[variant]]


def run_vs_trl(
    strategies: list[str],
    output_dir: Path,
    pairs: int,
    num_processes: int,
    mixed_precision: str,
    script_args,
    log=print,
) -> dict:
    """Ours vs plain TRL under each strategy, alternating (``versus.py``); writes ``vs_trl.json``."""
    from disttune.versus import PEER, compare

    ours, results = find_script(None), {}
    for strategy in strategies:
        log(f"bench --vs_trl: {strategy}, {pairs} pair(s) of ours and plain TRL, {num_processes} process(es)")

        def command(script, strategy=strategy):
            return lambda run_dir: launch_command(
                strategy, script, run_dir, num_processes, mixed_precision, script_args
            )

        work = output_dir / f"vs_trl-{strategy}"
        results[strategy] = compare({"ours": command(ours), "plain": command(PEER)}, work, pairs, 3, log)
    data = {"num_processes": num_processes, "mixed_precision": mixed_precision, "script_args": script_args}
    data["strategies"] = results
    (output_dir / "vs_trl.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def run_bench(
    strategies: list[str],
    output_dir: Path,
    num_processes: int = 2,
    model: str = "tiny",
    max_steps: int = 5,
    per_device_batch: int = 8,
    max_length: int = 128,
    mixed_precision: str = "no",
    variant: str = "default",
    seed: int = 42,
    script: str | None = None,
    timeout: float = 900,
    log=print,
) -> dict:
    """Run every strategy in turn; returns (and writes) the ``bench.json`` data."""
    from disttune.train.tiny import TINY_NAME, tiny_checkpoint

    _check_variant(variant)
    script_path = find_script(script)
    # Build the tiny checkpoint here, outside any DeepSpeed context, so every rank of every run loads it.
    model_dir = str(tiny_checkpoint(seed)) if model == TINY_NAME else model
    output_dir.mkdir(parents=True, exist_ok=True)
    script_args = bench_script_args(model_dir, max_steps, per_device_batch, max_length, seed, variant)
    runs = []
    for i, strategy in enumerate(strategies, 1):
        run_dir = output_dir / strategy
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = launch_command(strategy, script_path, run_dir, num_processes, mixed_precision, script_args)
        start = time.perf_counter()
        rc = _launch_one(cmd, run_dir, timeout)
        wall = time.perf_counter() - start
        if rc != 0 or not RunFolder(run_dir).summary.is_file():
            log(
                f"bench: [{i}/{len(strategies)}] {strategy}: FAILED ({rc}) after {wall:.0f} s; see {run_dir / 'launch.log'}"
            )
            runs.append({"strategy": strategy, "error": f"exit {rc}", "log": str(run_dir / "launch.log")})
            continue
        est = estimated_state(
            strategy, model_dir, num_processes, mixed_precision, per_device_batch, max_length
        )
        record = summarize_run(strategy, run_dir, est, wall)
        runs.append(record)
        log(
            f"bench: [{i}/{len(strategies)}] {strategy}: {record['tokens_per_second']} tokens/s, "
            f"final loss {record['final_loss']:.4f}, model states {_mb(record['measured_model_state_bytes'])} "
            f"measured vs {_mb(record['estimated_model_state_bytes'])} estimated "
            f"({record['estimate_rel_error']:+.1%}), {wall:.0f} s"
        )
    ddp = next((r for r in runs if r["strategy"] == "ddp" and "error" not in r), None)
    for r in runs:
        if "error" not in r:
            r["max_loss_deviation_from_ddp"] = max_loss_deviation(r["losses"], ddp["losses"]) if ddp else None
    setup = {
        "num_processes": num_processes,
        "model": model,
        "model_dir": model_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": per_device_batch,
        "global_batch_size": per_device_batch * num_processes,
        "max_length": max_length,
        "mixed_precision": mixed_precision,
        "variant": variant,
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
    }
    data = {"setup": setup, "runs": runs}
    (output_dir / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (output_dir / "bench.md").write_text(render_markdown(data))
    plot(data, output_dir / "bench.png")
    return data


def _mb(value) -> str:
    return f"{value / 1e6:.2f} MB" if value is not None else "n/a"


def _machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def render_markdown(data: dict) -> str:
    """The bench table: one row per strategy."""
    s = data["setup"]
    lines = [
        f"# disttune bench ({s['date']}, {s['machine']})",
        "",
        f"{s['num_processes']} processes, model {s['model']}, {s['max_steps']} steps, global batch "
        f"{s['global_batch_size']}, max_length {s['max_length']}, mixed_precision {s['mixed_precision']}, "
        f"variant {s['variant']}. Model states per rank: params + grads + optimizer states, measured from "
        "the live tensors at the fullest moment of optimizer step 2; estimate from `disttune estimate`.",
        "",
        "| strategy | tokens/s | peak memory | model states measured | estimated | error | final loss "
        "| max loss dev. from DDP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reserved_runs = [r for r in data["runs"] if r.get("peak_memory_reserved_bytes")]
    for r in data["runs"]:
        if "error" in r:
            lines.append(f"| {r['strategy']} | failed: {r['error']} | | | | | | |")
            continue
        dev = r.get("max_loss_deviation_from_ddp")
        lines.append(
            f"| {r['strategy']} | {r['tokens_per_second']} | {_mb(r['peak_memory_bytes'])} "
            f"({r['peak_memory_kind']}) | {_mb(r['measured_model_state_bytes'])} | "
            f"{_mb(r['estimated_model_state_bytes'])} | {r['estimate_rel_error']:+.1%} | "
            f"{r['final_loss']:.4f} | {'n/a' if dev is None else f'{dev:.2e}'} |"
        )
    if reserved_runs:
        lines += [
            "",
            "GPU memory reserved by torch's caching allocator (max over ranks) vs `disttune estimate`:",
            "",
            "| strategy | max_memory_reserved | estimated | error |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['strategy']} | {_mb(max(r['peak_memory_reserved_bytes']))} | "
            f"{_mb(r['estimated_reserved_bytes'])} | {r['reserved_rel_error']:+.1%} |"
            for r in reserved_runs
        ]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Loss curves, throughput and memory per strategy, side by side (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in data["runs"] if "error" not in r]
    names = [r["strategy"] for r in runs]
    fig, (ax_loss, ax_tps, ax_mem) = plt.subplots(1, 3, figsize=(16, 4.8))
    for r in runs:
        steps, losses = zip(*r["losses"], strict=True) if r["losses"] else ((), ())
        ax_loss.plot(steps, losses, marker="o", markersize=3, label=r["strategy"])
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    ax_loss.legend()
    ax_tps.bar(names, [r["tokens_per_second"] or 0 for r in runs], color="tab:green")
    ax_tps.set(title="throughput (all ranks)", ylabel="tokens / s")
    x = range(len(runs))
    width = 0.4
    ax_mem.bar(
        [i - width / 2 for i in x],
        [r["measured_model_state_bytes"] / 1e6 for r in runs],
        width,
        label="measured",
    )
    ax_mem.bar(
        [i + width / 2 for i in x],
        [r["estimated_model_state_bytes"] / 1e6 for r in runs],
        width,
        label="estimated",
    )
    ax_mem.set_xticks(list(x), names)
    ax_mem.set(title="model states per rank", ylabel="MB")
    ax_mem.legend()
    for ax in (ax_tps, ax_mem):
        ax.tick_params(axis="x", rotation=30)
    s = data["setup"]
    fig.suptitle(
        f"disttune bench: {s['num_processes']} processes, {s['model']}, {s['mixed_precision']}, "
        f"{s['max_steps']} steps ({s['machine']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
