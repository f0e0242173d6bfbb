"""How long `snakemake -n` takes on a large config, with and without code fingerprints.

A user notices the DAG build on every `snakemake` call. This draws a data set of `--images` files
(tiny stand-ins: a dry run never decodes them) and a config of `--experiments` experiments, then
times `snakemake --dry-run` in this checkout and in a baseline revision (default: the last commit
before code fingerprints), alternating, after one untimed run each that fills the data
fingerprint's cache. Each tree imports its own src/. Run from the repository root:

    python benchmarks/dag_build.py [--images 70000] [--experiments 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def default_baseline() -> str:
    added = git("log", "--diff-filter=A", "--format=%H", "--", "src/cvpipe/stagecode.py")
    return f"{added.splitlines()[-1]}~1" if added else "HEAD"


def make_data(root: Path, images: int) -> None:
    classes = ["a", "b", "c", "d"]
    for c in classes:
        (root / c).mkdir(parents=True)
    for i in range(images):
        (root / classes[i % 4] / f"img_{i:06d}.png").write_bytes(i.to_bytes(4, "little") * 16)


def make_config(path: Path, data: Path, experiments: int) -> None:
    lines = [f"data:\n  root: {data}\n", "experiments:\n"]
    lines += [f"  exp{i:03d}:\n    lr: {0.001 * (i + 1):.4f}\n" for i in range(experiments)]
    path.write_text("".join(lines))


def dry_run(tree: Path, workdir: Path, config: Path) -> float:
    cmd = [
        str(BIN / "snakemake"), "-s", str(tree / "Snakefile"), "-d", str(workdir), "--dry-run",
        "--quiet", "all", "--nolock", "--configfile", str(tree / "config" / "config.yaml"),
        str(config),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dry run in {tree} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def fingerprint_seconds() -> float:
    """Cold in-process cost of every rule's code fingerprint (what one parse computes)."""
    code = (
        "import time; t = time.perf_counter(); from cvpipe import stagecode\n"
        "for s in ('synth','index','preprocess','train','evaluate','plots','compare'):\n"
        "    stagecode.stage_hashes([s])\n"
        "stagecode.stage_hashes(['gpus', 'train'])\n"
        "print(time.perf_counter() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True).stdout)
        for _ in range(5)
    ]  # fmt: skip
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=default_baseline(), help="git revision to compare")
    a = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvpipe-dag-") as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        git("worktree", "add", "--detach", str(baseline), a.baseline)
        try:
            make_data(tmp / "data", a.images)
            make_config(tmp / "big.yaml", tmp / "data", a.experiments)
            trees = {"this checkout": REPO, f"baseline {a.baseline}": baseline}
            times: dict[str, list[float]] = {name: [] for name in trees}
            for tree in trees.values():
                dry_run(tree, tmp / "work", tmp / "big.yaml")  # fills the data hash cache
            for _ in range(a.repeats):
                for name, tree in trees.items():
                    times[name].append(dry_run(tree, tmp / "work", tmp / "big.yaml"))
        finally:
            git("worktree", "remove", "--force", str(baseline))

    print(f"snakemake --dry-run, {a.experiments} experiments, {a.images} images, "
          f"median of {a.repeats} (machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()})")  # fmt: skip
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(
            f"  {name:<40} {median:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times[name])})"
        )
    ours, base = medians["this checkout"], medians[f"baseline {a.baseline}"]
    print(f"  ratio this/baseline: {ours / base:.3f}")
    print(f"  code fingerprints of every rule, cold, in-process: {fingerprint_seconds():.3f} s")


if __name__ == "__main__":
    main()
