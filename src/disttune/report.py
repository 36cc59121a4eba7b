"""``disttune report``: loss, throughput and memory of one or several finished runs, in one PNG and a table.

Read from each run folder: ``metrics.jsonl`` (one record per logged step, ``train/metrics.py``) and, when
the run finished, ``run_summary.json``. A resumed run's later records carry a ``run_id`` ending in
``-from-step<N>``: the plot starts a new segment there and marks the resume point.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from disttune.errors import UserError
from disttune.run_folder import RunFolder, read_jsonl
from disttune.strategies import DATA_PARALLEL_TYPES

REQUIRED = ("step", "loss", "tokens_per_second", "peak_memory_bytes")  # what the plot reads from each record
MIB = 2**20
_RESUMED = re.compile(r"-from-step(\d+)$")


@dataclass(frozen=True)
class Segment:
    """The records of one launch, in file order; ``resumed_from`` is the checkpoint step it resumed from."""

    run_id: str | None
    resumed_from: int | None
    records: list[dict]


@dataclass(frozen=True)
class Run:
    """One run folder: its label in the plot and table, its launches and its summary (None if unfinished)."""

    label: str
    path: Path
    segments: list[Segment]
    summary: dict | None = field(default=None)

    @property
    def last(self) -> dict:
        """The last record written (the newest launch's last logged step)."""
        return self.segments[-1].records[-1]


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each given folder that holds ``metrics.jsonl``; a folder without one (a ``disttune bench`` output)
    stands for its subfolders that have one. Raises ``UserError`` for a folder that is neither."""
    found = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise UserError(
                f"{path}: no such folder.\n  fix: give the --output_dir of a training run "
                "(the folder with metrics.jsonl) or of a `disttune bench`."
            )
        if RunFolder(path).metrics.is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if RunFolder(p).metrics.is_file())
        if not children:
            raise UserError(
                f"{path}: no {RunFolder(path).metrics.name} in it or in its subfolders.\n  fix: give the --output_dir "
                "of a training run that logged at least one step (it writes metrics.jsonl there)."
            )
        found += children
    return found


def _labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell the runs apart (``ddp``, ``a/final``)."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same folder given twice


def _segments(records: list[dict]) -> list[Segment]:
    """Split records where ``run_id`` changes (one segment per launch)."""
    segments: list[Segment] = []
    for record in records:
        run_id = record.get("run_id")
        if not segments or segments[-1].run_id != run_id:
            match = _RESUMED.search(run_id or "")
            segments.append(Segment(run_id, int(match.group(1)) if match else None, []))
        segments[-1].records.append(record)
    return segments


def load_run(path: Path, label: str) -> Run:
    """Read one run folder; every problem is a ``UserError`` naming the file (and the line) and the fix."""
    metrics = RunFolder(path).metrics
    try:
        records = read_jsonl(metrics)
    except ValueError as exc:
        raise UserError(
            f"{exc}\n  fix: the file is damaged (a run killed mid-write leaves half a line): "
            "delete that line and run `disttune report` again."
        ) from exc
    if not records:
        raise UserError(
            f"{metrics}: empty: the run logged no step.\n  fix: let the run reach its first "
            "logging step (--logging_steps), or leave this folder out."
        )
    for number, record in enumerate(records, 1):
        missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
        if missing:
            raise UserError(
                f"{metrics}, record {number}: no {', '.join(missing)}: not a metrics file written by "
                "disttune's training script.\n  fix: give the --output_dir of a disttune run."
            )
    summary = None
    if RunFolder(path).summary.is_file():
        try:
            summary = json.loads(RunFolder(path).summary.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{RunFolder(path).summary}: not valid JSON ({exc.msg}, line {exc.lineno}).\n  fix: delete "
                "the file to report the run from metrics.jsonl alone."
            ) from exc
    return Run(label, path, _segments(records), summary)


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every run under ``paths`` (see ``find_run_dirs``), labelled so that they can be told apart."""
    dirs = find_run_dirs(paths)
    return [load_run(path, label) for path, label in zip(dirs, _labels(dirs), strict=True)]


def strategy_name(summary: dict) -> str:
    """``DDP``, ``ZeRO-3``, ``FSDP2`` or ``single process`` from ``run_summary.json``'s accelerate state."""
    kind = summary.get("distributed_type")
    if kind == "DEEPSPEED":
        return f"ZeRO-{summary.get('zero_stage')}"
    if kind == "FSDP":
        return f"FSDP{summary.get('fsdp_version') or ''}"
    if kind in DATA_PARALLEL_TYPES:
        return "DDP"
    return "single process" if kind == "NO" else str(kind)


def summarize(run: Run) -> dict:
    """The table row of one run: from ``run_summary.json`` when the run finished, else from its last record."""
    s = run.summary or {}
    peaks = [b for b in s.get("peak_memory_bytes") or run.last["peak_memory_bytes"] or [] if b is not None]
    return {
        "run": run.label,
        "strategy": strategy_name(s) if s else None,
        "world_size": s.get("world_size", len(run.last.get("tokens_per_second_per_rank") or []) or None),
        "global_batch_size": s.get("global_batch_size"),
        "steps": s.get("global_step", run.last["step"]),
        "final_loss": s.get("final_loss", run.last["loss"]),
        "tokens_per_second": s.get("tokens_per_second"),
        "peak_memory_bytes": max(peaks) if peaks else None,
        "peak_memory_kind": s.get("peak_memory_kind"),
        "resumed_from": [seg.resumed_from for seg in run.segments if seg.resumed_from is not None],
        "finished": run.summary is not None,
    }


def _cell(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def render_markdown(runs: list[Run]) -> str:
    """A markdown table, one row per run, and a line per resumed or unfinished run."""
    lines = [
        "# disttune report",
        "",
        "| run | strategy | world size | global batch | steps | final loss | tokens/s | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for run in runs:
        row = summarize(run)
        kind = {"cpu_max_rss": " (CPU RSS)", "cuda_max_memory_allocated": " (GPU)"}.get(
            row["peak_memory_kind"], ""
        )
        memory = _cell(row["peak_memory_bytes"] and row["peak_memory_bytes"] / MIB, "{:,.0f} MiB") + kind
        lines.append(
            f"| {row['run']} | {_cell(row['strategy'])} | {_cell(row['world_size'])} | "
            f"{_cell(row['global_batch_size'])} | {row['steps']} | {_cell(row['final_loss'], '{:.4f}')} | "
            f"{_cell(row['tokens_per_second'], '{:,.0f}')} | {memory} |"
        )
        if row["resumed_from"]:
            steps = ", ".join(str(s) for s in row["resumed_from"])
            notes.append(f"- {row['run']}: resumed from step {steps}; tokens/s is the last launch's.")
        if not row["finished"]:
            notes.append(
                f"- {row['run']}: no run_summary.json (the run did not finish): steps and loss are the last "
                "logged ones."
            )
    lines.append("")
    lines.append(
        "Peak memory: the largest rank's peak (GPU: max allocated; CPU: the process's max RSS). "
        "tokens/s: all ranks together, over the whole run."
    )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def segment_labels(run: Run) -> list[str]:
    """The legend entry of each launch of ``run``: the first names the strategy and world size, a resume
    says from which step (and under which layout, when it changed: the summary describes the last launch)."""
    name, moved = run.label, None
    change = (run.summary or {}).get("layout_change")
    if change:
        before, moved = change.split(" -> ", 1)
        name += f" ({before})"
    elif run.summary:
        ranks = run.summary.get("world_size", "?")
        name += f" ({strategy_name(run.summary)}, {ranks} rank{'' if ranks == 1 else 's'})"
    return [
        name
        if seg.resumed_from is None
        else f"{run.label}, resumed from step {seg.resumed_from}" + (f" as {moved}" if moved else "")
        for seg in run.segments
    ]


def _memory_label(runs: list[Run]) -> str:
    kinds = {(run.summary or {}).get("peak_memory_kind") for run in runs} - {None}
    names = {"cpu_max_rss": "CPU: process max RSS", "cuda_max_memory_allocated": "GPU: max allocated"}
    return "MiB" + (f" ({', '.join(sorted(names.get(k, k) for k in kinds))})" if kinds else "")


def _series(records: list[dict]) -> tuple[list, list, list, list]:
    """Steps, losses, tokens/s and the largest rank's peak memory (MiB) of some records."""
    memory = [
        max((b for b in r["peak_memory_bytes"] if b is not None), default=float("nan")) / MIB for r in records
    ]
    return (
        [r["step"] for r in records],
        [r["loss"] for r in records],
        [r["tokens_per_second"] for r in records],
        memory,
    )


def plot(runs: list[Run], path: Path) -> None:
    """Loss, throughput and peak memory per logged step, one colour per run; resume points marked.

    Runs that agree exactly (the strategies on the same seed) would hide each other: each later run is
    drawn thinner, with its own marker, over the earlier ones. After a resume, the steps the earlier launch
    logged past the checkpoint (redone by the resumed launch) stay as a faint line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax_loss = axes[0]
    many_steps = max(len(seg.records) for run in runs for seg in run.segments) > 40
    for index, run in enumerate(runs):
        under = min(len(runs) - 1 - index, 3)  # how many runs are drawn over this one
        style = {"color": f"C{index % 10}", "linewidth": 1.8 + 1.3 * under}
        if not many_steps:
            style |= {"marker": "osD^vP*X"[index % 8], "markersize": 4.5 + 2 * under}
        labels = segment_labels(run)
        for number, seg in enumerate(run.segments):
            later = run.segments[number + 1].resumed_from if number + 1 < len(run.segments) else None
            kept = [r for r in seg.records if later is None or r["step"] <= later]
            redone = [r for r in seg.records if later is not None and r["step"] >= later]
            label = labels[number]
            if seg.resumed_from is None:
                seg_style = {**style, "linestyle": "-"}
            else:
                seg_style = {**style, "linestyle": "--", "markerfacecolor": "white"}
            for ax, values in zip(axes, _series(kept)[1:], strict=True):
                ax.plot(_series(kept)[0], values, label=label if ax is ax_loss else None, **seg_style)
            if len(redone) > 1:
                for ax, values in zip(axes, _series(redone)[1:], strict=True):
                    ax.plot(
                        _series(redone)[0],
                        values,
                        color=style["color"],
                        linewidth=1,
                        alpha=0.35,
                        label=f"{run.label}, steps redone after the resume" if ax is ax_loss else None,
                    )
            if seg.resumed_from is not None:
                for ax in axes:
                    ax.axvline(seg.resumed_from, color=style["color"], linestyle=":", linewidth=1.2)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    axes[1].set(title="throughput, all ranks together", xlabel="optimizer step", ylabel="tokens / s")
    axes[2].set(title="peak memory of the largest rank", xlabel="optimizer step", ylabel=_memory_label(runs))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1:]:  # from zero, so that a gap looks as large as it is
        top = ax.dataLim.ymax
        ax.set_ylim(0, top * 1.1 if top > 0 and top != float("inf") else None)
    ax_loss.legend(fontsize="small")
    names = ", ".join(run.label for run in runs)
    fig.suptitle(f"disttune report: {names if len(names) < 100 else f'{len(runs)} runs'}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(paths: list[str | Path], output: Path) -> tuple[Path, Path, str]:
    """Read the runs, write ``output`` (PNG) and the markdown beside it (``.md``); returns both paths and the
    markdown."""
    runs = load_runs(paths)
    markdown = render_markdown(runs)
    plot(runs, output)
    md_path = output.with_suffix(".md")
    md_path.write_text(markdown)
    return output, md_path, markdown
