"""The ``families`` marker: the full model-family matrix runs only when ``-m`` names it (``make test-families``).

A hook rather than ``-m "not families"`` in addopts, so that ``pytest -q`` (``make test``) stays the CI
run and any other ``-m`` expression (``-m distributed``, ``-m "not gpu"``) still leaves the matrix out.
"""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    if "families" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("families") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("families")])
        items[:] = kept
