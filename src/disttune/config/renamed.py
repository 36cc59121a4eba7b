"""accelerate config keys that were renamed: their successor, the release that renamed them, and whether the
old name still works.

Keyed by the dotted path inside its file (``fsdp_config`` keys with their ``fsdp_`` prefix). A key that the
targeted release (accelerate 1.15) no longer reads is an error (the setting is silently lost); one it still
reads and translates is a warning (it runs as written, but the next release may drop it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Renamed:
    """A renamed key.

    Attributes:
        new: the successor, as it is written in the same section.
        since: the release that renamed it (and where the change is recorded).
        read: whether the targeted release still reads the old name.
    """

    new: str
    since: str
    read: bool


# accelerate config (YAML, or JSON as accelerate also accepts)
ACCELERATE = {
    # huggingface/accelerate PR #2288 (issue #2275), released in 0.26.0; the old name was read with a
    # deprecation warning for a while, and accelerate 1.15 no longer reads it.
    "fsdp_config.fsdp_backward_prefetch_policy": Renamed(
        "fsdp_backward_prefetch", "accelerate 0.26.0", read=False
    ),
}

# DeepSpeed's deprecated keys are derived from DeepSpeed itself: see spellings.py.
