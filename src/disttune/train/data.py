"""Training data: the built-in synthetic instruction set, local files, and hub datasets.

Supported formats (the ones TRL's ``SFTTrainer`` understands):
- conversational ``messages`` (list of ``{"role", "content"}``): loss on assistant turns only;
- ``prompt`` / ``completion``: loss on the completion only;
- plain ``text``: loss on every token.
"""

from __future__ import annotations

import random
from pathlib import Path

from disttune.errors import UserError

BUILTIN_NAME = "builtin"
FILE_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMATS = ("messages", "prompt_completion", "text")


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice("+-*")
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", str(answer)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
    return f"Reverse the word: {word}", word[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
    return f"Uppercase: {word}", word.upper()


def _count(rng: random.Random) -> tuple[str, str]:
    letter = rng.choice("abc")
    word = "".join(rng.choice("abcd") for _ in range(rng.randint(4, 12)))
    return f"How many times does '{letter}' occur in {word}?", str(word.count(letter))


def _sort_digits(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 8)))
    return f"Sort the digits: {digits}", "".join(sorted(digits))


TASKS = (_arithmetic, _reverse, _upper, _count, _sort_digits)


def builtin_examples(num_examples: int = 4000, seed: int = 1234) -> list[dict]:
    """Synthetic instructions with verifiable answers, as conversational ``messages`` records.

    Deterministic for a given ``seed`` so every rank (and every run) sees the same data.
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        question, answer = rng.choice(TASKS)(rng)
        examples.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        )
    return examples


def builtin_heldout(train: list[dict], num_examples: int = 64, seed: int = 1234) -> list[dict]:
    """The built-in set's held-out split: ``num_examples`` records drawn like ``builtin_examples`` but from
    their own generator, none of them asking a question that ``train`` asks (so none is trained on).

    The training set itself is left as it was: the same 4000 examples as a run without a held-out split.
    """
    seen = {example["messages"][0]["content"] for example in train}
    rng = random.Random(f"heldout-{seed}")
    heldout: list[dict] = []
    for _ in range(1000 * max(num_examples, 1)):  # the task space is far larger than any train set
        if len(heldout) == num_examples:
            break
        question, answer = rng.choice(TASKS)(rng)
        if question not in seen:
            seen.add(question)
            heldout.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    return heldout


def split_for_eval(dataset, eval_split: str, name: str, config: str | None = None, seed: int = 1234):
    """``(train, eval)`` for ``--eval_split``: a fraction in (0, 1) holds that share of ``dataset`` out of
    training (the same rows on every rank, for a given ``seed``); any other value names a split of the hub
    dataset or local dataset folder ``name``, loaded beside the training split.
    """
    from datasets import load_dataset

    try:
        fraction = float(eval_split)
    except ValueError:
        fraction = None
    if fraction is not None:
        if not 0 < fraction < 1 or round(fraction * len(dataset)) < 1:
            raise UserError(
                f"--eval_split {eval_split}: a held-out fraction must lie between 0 and 1 and leave at least "
                f"one of the {len(dataset)} examples out.\n  fix: e.g. --eval_split 0.05, or a split name."
            )
        parts = dataset.train_test_split(test_size=fraction, seed=seed)
        return parts["train"], parts["test"]
    if Path(name).suffix.lower() in FILE_LOADERS:
        raise UserError(
            f"--eval_split {eval_split}: a local file has no named splits.\n"
            "  fix: hold a fraction of it out (--eval_split 0.05), or give a dataset folder or hub name."
        )
    try:
        held = load_dataset(name if not Path(name).exists() else str(Path(name)), config, split=eval_split)
    except Exception as exc:  # unknown split, unreachable hub: one line, no traceback
        raise UserError(
            f"--eval_split {eval_split}: cannot load this split of {name} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}).\n"
            "  fix: name a split the dataset has, or hold a fraction out (--eval_split 0.05)."
        ) from exc
    missing = sorted(set(dataset.column_names) - set(held.column_names))
    if missing:
        raise UserError(
            f"--eval_split {eval_split}: this split lacks the training columns {', '.join(missing)}.\n"
            "  fix: name a split in the same format as the training split."
        )
    return dataset, held.remove_columns([c for c in held.column_names if c not in dataset.column_names])


def _builtin_rows(seed: int):
    yield from builtin_examples(seed=seed)


def detect_format(column_names: list[str], where: str) -> str:
    """The dataset format from its columns; a clear error naming the columns found otherwise."""
    columns = set(column_names)
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    raise UserError(
        f"{where}: no supported columns found (columns: {', '.join(sorted(columns)) or 'none'}).\n"
        "  fix: provide one of: 'messages' (a list of {role, content}), 'prompt' + 'completion', or 'text'."
    )


def check_dataset_name(name: str) -> None:
    """Refuse a local data set path that does not exist, before anything is loaded (a file with a known
    suffix, or a path written as one: ``/``, ``./``, ``../``, ``~``); hub names are left to ``datasets``."""
    if name == BUILTIN_NAME:
        return
    path = Path(name).expanduser()
    looks_local = path.suffix.lower() in FILE_LOADERS or name.startswith(("/", "./", "../", "~"))
    if looks_local and not path.exists():
        raise UserError(
            f"--dataset_name {name}: file not found.\n  fix: check the path (cwd: {Path.cwd()}); or give a "
            "hub data set name, or 'builtin' for the built-in data."
        )


def load_train_dataset(name: str, split: str = "train", config: str | None = None, seed: int = 1234):
    """Load ``name`` (``builtin``, a local .jsonl/.json/.parquet/.csv file, or a ``datasets`` hub name).

    Returns ``(dataset, format)``. Only the supported columns are kept.
    """
    from datasets import Dataset, load_dataset

    if name == BUILTIN_NAME:
        # Written to the datasets cache (not held in memory): TRL's preparation passes are then cached
        # too, so the main process prepares the data once and the others read its cache.
        dataset = Dataset.from_generator(_builtin_rows, gen_kwargs={"seed": seed})
    else:
        path = Path(name)
        if path.suffix.lower() in FILE_LOADERS:
            if not path.is_file():
                raise UserError(
                    f"--dataset_name {name}: file not found.\n  fix: check the path (cwd: {Path.cwd()})."
                )
            try:
                dataset = load_dataset(FILE_LOADERS[path.suffix.lower()], data_files=str(path), split="train")
            except Exception as exc:  # a malformed file: say which and why, no traceback
                raise UserError(f"--dataset_name {name}: cannot read the file: {exc}") from exc
        else:
            try:  # a local dataset folder, or a hub name
                dataset = load_dataset(str(path) if path.exists() else name, config, split=split)
            except Exception as exc:  # unreachable hub, unknown name or split: one line, no traceback
                raise UserError(
                    f"--dataset_name {name}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]}).\n"
                    "  fix: give a local .jsonl/.json/.parquet/.csv file, a local dataset folder, a hub name "
                    "reachable from this machine, or 'builtin'."
                ) from exc
    fmt = detect_format(dataset.column_names, f"dataset {name}")
    keep = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
    return dataset, fmt
