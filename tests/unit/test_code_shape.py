"""The code stays readable in one sitting: no function in src/ over 80 lines, a light training entry point."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "disttune"
LIMIT = 80


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these: " + "; ".join(long)


def test_the_training_entry_point_reads_top_to_bottom_with_few_internal_imports():
    """train/main.py: setup -> build -> fit, with at most 12 of disttune's modules (it was a hub of 22)."""
    tree = ast.parse((SRC / "train" / "main.py").read_text())
    modules = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("disttune"):
            modules |= {
                f"{node.module}.{a.name}" if node.module == "disttune.train" else node.module
                for a in node.names
            }
    assert len(modules) <= 12, sorted(modules)


def test_readers_of_a_run_folder_import_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys, disttune.run_folder, disttune.report, disttune.train.failure, disttune.cli.launch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_lower_floors_never_import_the_training_script():
    """docs/architecture.md's floors: config/, estimate/ and the rooms below them import nothing of train/
    (disttune check reads the script's arguments through the command, which hands config/ the result)."""
    lower = [*(SRC / "config").rglob("*.py"), *(SRC / "estimate").rglob("*.py")]
    lower += [SRC / name for name in ("errors.py", "extensions.py", "precision.py", "strategies.py")]
    lower += [SRC / name for name in ("plan.py", "run_folder.py", "versus.py")]
    upward = []
    for path in lower:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            upward += [f"{path.relative_to(SRC)}: {n}" for n in names if n.startswith("disttune.train")]
    assert not upward, upward
