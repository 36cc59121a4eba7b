"""``disttune train [ARGS]``: the training script (``07_distributed_training.py``) in this process.

For several processes launch it instead: ``accelerate launch --config_file CONFIG 07_distributed_training.py``
or ``disttune launch CONFIG -- 07_distributed_training.py``. ``disttune train --help`` lists its options.
"""

from __future__ import annotations


def register(subparsers) -> None:
    """Add ``train``; every argument after it goes to the training script."""
    parser = subparsers.add_parser(
        "train",
        help="run the SFT training script in this process (see `disttune train --help`)",
        add_help=False,
        description=__doc__,
    )
    parser.set_defaults(run=run, pass_through=True)  # unknown options (all of them) go to the script


def run(args) -> int:
    """Hand the arguments to ``disttune.train.main``; it prints its own errors."""
    from disttune.train.main import main

    return main(list(args.script_args))
