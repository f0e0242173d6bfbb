"""Code fingerprints of the stages (cvpipe.stagecode): what each covers and what changes them.

The fingerprints decide what `snakemake` reruns after a code change, so a user would notice two
kinds of failure: a real change that reruns nothing (results mix code versions) and a comment
or formatting change that retrains everything. Both are checked on a copy of the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN, REPO

from cvpipe import stagecode
from cvpipe.cli import build_parser

PACKAGE = REPO / "src" / "cvpipe"


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the cvpipe package that a test may edit."""
    return Path(shutil.copytree(PACKAGE, tmp_path / "cvpipe"))


def hashes(package: Path, *commands: str) -> dict[str, str]:
    return stagecode.stage_hashes(commands, package)


def test_each_stage_covers_the_modules_it_imports_and_no_others():
    plots = set(hashes(PACKAGE, "plots"))
    train = set(hashes(PACKAGE, "train"))
    evaluate = set(hashes(PACKAGE, "evaluate"))
    assert {"plots", "cli[plots]", "__init__", "__main__", "atomic"} <= plots
    assert not {"train", "evaluate", "bench", "models", "cli[train]"} & plots
    assert {"train", "augment", "models", "data", "checkpoint", "cli[train]"} <= train
    # metrics: validation's accuracy and macro-F1 share the module with evaluate's report.
    assert "metrics" in train
    assert not {"evaluate", "plots", "compare", "bench", "index"} & train
    # evaluate shares the AMP policy with train through runtime, not by importing train.
    assert {"evaluate", "metrics", "runtime", "models"} <= evaluate
    assert "train" not in evaluate
    assert "gpus" in hashes(PACKAGE, "gpus", "train")
    assert not any(
        "bench" in m for s in ("index", "preprocess", "compare") for m in hashes(PACKAGE, s)
    )


def test_every_subcommand_has_its_add_and_run_functions():
    """The cli slicing relies on the pairing; a subcommand without it would be fingerprinted
    with no code of its own."""
    import cvpipe.cli as cli

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        name = command.replace("-", "_")  # `cvpipe model-card`: add_model_card, run_model_card
        assert callable(getattr(cli, f"add_{name}")), name
        assert any(f.startswith(f"run_{name}") for f in dir(cli)), name
        assert hashes(PACKAGE, name)[f"cli[{name}]"]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_comments_docstrings_and_formatting_change_nothing(package):
    before = {s: hashes(package, s) for s in ("train", "plots")}
    train = package / "train.py"
    edit(train, '"""', '"""A docstring edit. ')
    train.write_text(train.read_text() + "\n\n# a comment at the end\n")
    edit(train, "\ndef ", "\n# a comment before a function\ndef ")
    # Formatting-only: the whole file rewrapped to 60 columns by ruff.
    subprocess.run(
        [str(BIN / "ruff"), "format", "--quiet", "--line-length", "60", str(train)],
        check=True,
        cwd=package,
    )
    assert train.read_text() != (PACKAGE / "train.py").read_text()
    # A release number is not behaviour either.
    edit(package / "__init__.py", '__version__ = "', '__version__ = "9')
    assert {s: hashes(package, s) for s in ("train", "plots")} == before


def test_a_real_change_changes_its_module_and_stages_only(package):
    before = {s: hashes(package, s) for s in ("train", "evaluate", "plots", "index")}
    edit(package / "augment.py", "import ", "import math  # noqa\nimport ")
    after = {s: hashes(package, s) for s in before}
    for stage in ("train", "evaluate"):
        changed = {m for m in after[stage] if after[stage][m] != before[stage][m]}
        assert changed == {"augment"}, stage
    assert after["plots"] == before["plots"] and after["index"] == before["index"]


def test_cli_changes_reach_only_their_subcommand(package):
    before = {s: hashes(package, s) for s in ("train", "plots")}
    edit(
        package / "cli.py",
        "def run_plots(a: argparse.Namespace) -> None:\n",
        "def run_plots(a: argparse.Namespace) -> None:\n    a.dpi = a.dpi\n",
    )
    assert hashes(package, "train") == before["train"]
    assert hashes(package, "plots")["cli[plots]"] != before["plots"]["cli[plots]"]


def test_a_new_import_joins_the_closure(package):
    (package / "newmodule.py").write_text("VALUE = 1\n")
    anchor = "from cvpipe.index import read_manifest"
    edit(package / "plots.py", anchor, f"from cvpipe import newmodule\n{anchor}")
    assert "newmodule" in hashes(package, "plots")
    assert "newmodule" not in hashes(package, "train")


def test_unknown_command_is_named():
    with pytest.raises(FileNotFoundError, match="run_nonsense"):
        stagecode.stage_hashes(["nonsense"], PACKAGE)


def other_pythons() -> list[tuple[str, dict[str, str]]]:
    """(command, environment) of Pythons 3.10, 3.12 and 3.13 found here: on PATH, or pyenv's."""
    found = []
    pyenv = shutil.which("pyenv")
    installed = (
        subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True).stdout
        if pyenv
        else ""
    ).split()
    for minor in ("3.10", "3.12", "3.13"):
        env = dict(os.environ)
        version = next((v for v in installed if v.startswith(minor + ".")), None)
        if version:
            env["PYENV_VERSION"] = version
        ok = subprocess.run([f"python{minor}", "-c", ""], capture_output=True, env=env)
        if shutil.which(f"python{minor}") and ok.returncode == 0:
            found.append((f"python{minor}", env))
    return found


def test_same_code_same_fingerprint_on_every_python():
    """The Snakefile (host Python) and a job (container Python 3.12) must agree."""
    pythons = other_pythons()
    if not pythons:
        pytest.skip("no Python 3.10, 3.12 or 3.13 here")
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from cvpipe import stagecode; "
        "print(json.dumps({s: stagecode.stage_hashes([s]) for s in "
        "('synth', 'index', 'preprocess', 'train', 'evaluate', 'plots', 'compare', "
        "'model_card')}))"
    )
    results = {}
    for python, env in [(sys.executable, dict(os.environ)), *pythons]:
        proc = subprocess.run(
            [python, "-c", script, str(PACKAGE.parent)], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        results[python] = json.loads(proc.stdout)
    assert all(r == results[sys.executable] for r in results.values()), list(results)


def test_cvpipe_code_lists_modules():
    proc = subprocess.run(
        [sys.executable, "-m", "cvpipe", "code", "plots"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    fingerprint = stagecode.short(hashes(PACKAGE, "plots"))
    assert proc.stdout.splitlines()[0] == f"plots: {fingerprint}"
    assert any(line.split()[0] == "plots" for line in proc.stdout.splitlines()[1:])


def test_the_cache_file_spares_parsing_and_is_never_stale(package, tmp_path):
    cache = tmp_path / "code-fingerprint.json"
    first = stagecode.stage_hashes(["plots"], package, cache)
    assert cache.exists()
    # A new process (the next `snakemake`): nothing in memory, the file answers.
    stagecode._CACHES.clear()
    stagecode._parse.cache_clear()
    assert stagecode.stage_hashes(["plots"], package, cache) == first
    assert stagecode._parse.cache_info().currsize == 0  # not one module was parsed
    with open(package / "plots.py", "a") as f:
        f.write("\n_CHANGED = True\n")
    changed = stagecode.stage_hashes(["plots"], package, cache)
    assert changed["plots"] != first["plots"] and changed["errors"] == first["errors"]
    cache.write_text("{not json")
    stagecode._CACHES.clear()
    assert stagecode.stage_hashes(["plots"], package, cache) == changed
