"""Opt-in tiers: tests marked ``families`` or ``full`` run only when ``-m`` names their marker.

``make test`` (``pytest -q``, what CI runs) leaves them out; ``make test-full`` runs everything, and
``make test-families`` the model-family matrix alone. A hook rather than ``-m "not full"`` in addopts, so
that any other ``-m`` expression (``-m distributed``, ``-m "not gpu"``) still leaves the opt-in tiers out.
"""

from __future__ import annotations

OPT_IN = ("families", "full")


def pytest_collection_modifyitems(config, items):
    named = config.option.markexpr or ""
    left_out = [m for m in OPT_IN if m not in named]
    dropped = [item for item in items if any(item.get_closest_marker(m) for m in left_out)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
