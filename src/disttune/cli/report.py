"""``disttune report``: loss, throughput and memory of finished runs, in one PNG and a markdown table.

disttune report runs/demo
disttune report runs/bench                        # every strategy of a `disttune bench`
disttune report runs/resumed runs/twin --output runs/resume.png
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``disttune`` parser."""
    p = subparsers.add_parser(
        "report",
        help="plot loss, tokens/s and memory of one or several runs (PNG + markdown table)",
        description="Reads metrics.jsonl and run_summary.json of each RUN_DIR (a training run's --output_dir, "
        "or a `disttune bench` folder for all its strategies) and draws them over each other in one "
        "PNG; the markdown table beside it has strategy, world size, global batch, steps, final loss, "
        "tokens/s and peak memory per run. A resumed run's resume point is marked.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's --output_dir or a bench folder")
    p.add_argument(
        "--output",
        help="the PNG to write; the markdown goes beside it with .md (default: "
        "RUN_DIR/report.png for one RUN_DIR, ./report.png for several)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the PNG and the markdown, print the table."""
    from pathlib import Path

    from disttune.errors import UserError
    from disttune.report import write_report

    if args.output:
        output = Path(args.output)
    else:
        output = Path(args.run_dirs[0]) / "report.png" if len(args.run_dirs) == 1 else Path("report.png")
    if output.suffix.lower() != ".png":
        raise UserError(f"--output {output}: the plot is a PNG.\n  fix: give a path ending in .png.")
    png, md, markdown = write_report(args.run_dirs, output)
    print(markdown, end="")
    print(f"\nreport: wrote {png} and {md}")
    return 0
