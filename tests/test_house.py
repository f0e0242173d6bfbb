"""The house rules that keep the package readable, checked on the real source tree.

- No function in src/cvpipe is longer than `MAX_FUNCTION_LINES`.
- The import contracts in pyproject.toml ([tool.importlinter]) hold, and `lint-imports`
  really fails when a module breaks one (checked on a temporary copy of the package).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "cvpipe"
MAX_FUNCTION_LINES = 60


def long_functions(package: Path, limit: int) -> list[str]:
    """'file:line name (N lines)' for every function or method longer than `limit` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(
                        f"{path.relative_to(package.parent)}:{node.lineno} {node.name}"
                        f" ({length} lines)"
                    )
    return found


def test_no_function_is_longer_than_the_limit():
    assert long_functions(PACKAGE, MAX_FUNCTION_LINES) == []


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "mod.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path, MAX_FUNCTION_LINES) == [
        f"{tmp_path.name}/mod.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]


def _lint_imports(src: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with this repo's contracts, importing the package from `src`."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=src,
        env={"PATH": str(exe.parent), "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    result = _lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("plots.py", "from cvpipe import train", "Plots never import training"),
        ("gpus.py", "import torch", "free of torch and OpenCV"),
        ("index.py", "from cvpipe.train import train", "Data modules never import training"),
        ("atomic.py", "import snakemake", "never imports snakemake"),
        ("metrics.py", "from cvpipe import evaluate", "Layers run downward"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(tmp_path, module, line, contract):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "cvpipe", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "cvpipe" / module
    target.write_text(target.read_text() + f"\n\ndef _forbidden():\n    {line}\n")
    result = _lint_imports(src)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken
    assert f"cvpipe.{module.removesuffix('.py')}" in broken
