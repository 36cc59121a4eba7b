"""``disttune env``: versions, GPUs, the default accelerate config and the relevant variables."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``env`` command."""
    parser = subparsers.add_parser(
        "env",
        help="Report versions, GPUs, the default accelerate config and distributed env vars.",
        description="One report to paste into a bug: OS, Python, torch/CUDA/NCCL, accelerate, deepspeed, "
        "transformers, trl, peft, datasets, every GPU, the default accelerate config that `accelerate "
        "launch` picks up silently, and NCCL_*/TORCH_*/ACCELERATE_*/HF_* variables (secrets shown as ***).",
    )
    parser.add_argument("--json", action="store_true", help="Print the same data as JSON.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the environment report."""
    import json

    from disttune.env import collect_env, render_env

    data = collect_env()
    print(json.dumps(data, indent=2) if args.json else render_env(data))
    return 0
