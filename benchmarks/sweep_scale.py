"""How the workflow scales with a large sweep: its plan, a no-op and the report (issue 16).

Draws (or reuses, --data) a data set of --images stand-in files (dag_build.make_data: a dry run
never decodes them) and two sweep configs over it: 1,000 runs (2 models x 5 lr x 5 weight_decay
x 20 seeds) and 100 (the same grid, 2 seeds); each run is trained, evaluated and plotted (3
jobs), as a sweep's runs are by default. It measures, against the issue's targets:

  plan    `snakemake -n` of each sweep in an empty folder, every job planned (1,000 runs: 10 s);
          also the 1,000 runs with `sweep.extras: [gradcam, model_card]` (5 jobs a run)
  no-op   `snakemake` on the finished 100-run sweep, which must plan nothing (5 s)
  report  `snakemake --report ... --report-metadata ...` as `make run` runs it, on the finished
          1,000-run sweep (120 s)

"Finished" without training 1,000 models: the real workflow runs once on the tiny built-in data
(tests/configs/tiny.yaml, one run); its files are copied into every run's place (a file over
1 MB, the model, as a small stand-in: nothing measured here reads it), `snakemake --touch`
records each job as done (Snakemake's touch executor runs the usual postprocessing, which writes
.snakemake/metadata), and a real `snakemake` then runs the one job left, compare, over every
run's files. So the no-op's "Nothing to be done" is Snakemake's own verdict, and the report
holds every run's figures. `--touch` waits 0.1 s per job, so it runs in parallel batches.

Times are medians of --repeats after one untimed run (which fills the data fingerprint's
cache). Each gives the wall time, the CPU time of the snakemake process (steadier when others
share the machine) and the 1-minute load average before it. Run from the repository root:

    python benchmarks/sweep_scale.py [--work DIR] [--data DIR] [--repeats 3] [--limit 600]
                                     [--profile FILE]

--work keeps the data and the finished states (about 2.5 GB) for a later call, which then only
measures; without it they go to a temporary folder. A report past --limit seconds is stopped.
--profile also writes a cProfile of the 1,000-run `snakemake -n` and prints its top functions.
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dag_build import BIN, REPO, make_data  # beside this file: on sys.path when run as a script

TARGETS = {"plan": 10.0, "no-op": 5.0, "report": 120.0}  # seconds, issue 16
GRID = {
    "model": ["resnet18", "mobilenet_v3_small"],
    "lr": [0.001, 0.003, 0.01, 0.03, 0.1],
    "weight_decay": [0.0, 0.0001, 0.001, 0.01, 0.05],
}
TEMPLATE_RUN = "resnet18-s0"  # the one run of the template sweep (no grid, seed 0)
STAND_IN_OVER = 1 << 20  # bytes: bigger outputs (model.pt) are copied as a short note
TOUCH_BATCHES = 10  # parallel `snakemake --touch` processes (each waits 0.1 s per job)
PER_RUN_RULES = ["train", "evaluate", "plots"]  # a sweep run's jobs (without sweep.extras)
EXTRAS = ["gradcam", "model_card"]  # the plan with every extra is measured too


@dataclass
class Timing:
    wall: float
    cpu: float  # user + system of the child process
    load: float  # 1-minute load average before the run
    stdout: str
    timed_out: bool = False


def load() -> float:
    return os.getloadavg()[0]


def env() -> dict[str, str]:
    """This checkout's src/ and the venv's tools first (the Snakefile imports its own src/)."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "PATH": f"{BIN}:{os.environ['PATH']}"}


def snakemake(work: Path, configs: Sequence[Path], *args: str) -> list[str]:
    """The snakemake command on this checkout's Snakefile in `work` (config.yaml first)."""
    files = [str(REPO / "config" / "config.yaml"), *map(str, configs)]
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work),
            *args, "--configfile", *files]  # fmt: skip


def timed(cmd: list[str], timeout: float | None = None) -> Timing:
    """Run `cmd`; fail with its output if it fails. Past `timeout` seconds it is stopped, and
    its Timing says so (`timed_out`)."""
    before, start_load = resource.getrusage(resource.RUSAGE_CHILDREN), load()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return Timing(time.perf_counter() - start, float("nan"), start_load, "", timed_out=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu, start_load, proc.stdout + proc.stderr)


def measure(cmd: list[str], repeats: int) -> list[Timing]:
    timed(cmd)  # untimed: fills the data fingerprint's and the code fingerprints' caches
    return [timed(cmd) for _ in range(repeats)]


def write_sweep(path: Path, data: Path | None, seeds: int, extras: Sequence[str] = ()) -> None:
    """A sweep over GRID with `seeds` seeds (image and cache size 32 px, as the template's)."""
    grid = "".join(f"    {key}: [{', '.join(map(str, values))}]\n" for key, values in GRID.items())
    root = f"data:\n  root: {data}\n" if data else ""
    path.write_text(
        f"{root}experiments: null\nsweep:\n"
        "  base: {epochs: 2, image_size: 32, cache_size: 32}\n"
        f"  grid:\n{grid}  seeds: [{', '.join(map(str, range(seeds)))}]\n"
        + (f"  extras: [{', '.join(extras)}]\n" if extras else "")
    )


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table of a snakemake run or dry run."""
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    return {rule: int(count) for rule, count in rows if rule != "total"}


def run_names(work: Path, config: Path) -> list[str]:
    """The sweep's run names, as the workflow expands them (cvpipe.config)."""
    sys.path.insert(0, str(REPO / "src"))
    from cvpipe.config import experiments, load_configs, with_defaults

    merged = load_configs([REPO / "config" / "config.yaml", config])
    return list(experiments(with_defaults(merged, REPO / "workflow/schemas/config.schema.yaml")))


def template(work: Path) -> Path:
    """A real workflow run of one sweep run on the tiny built-in data (tests/configs)."""
    folder = work / "template"
    if (folder / "results" / "comparison" / "report-metadata.json").exists():
        return folder
    config = work / "template.yaml"
    config.write_text(
        "experiments: null\nsweep:\n  base: {image_size: 32, cache_size: 32}\n  seeds: [0]\n"
    )
    print("template: the real workflow on tiny data, one run ...", flush=True)
    tiny = REPO / "tests" / "configs" / "tiny.yaml"
    timed(snakemake(folder, [tiny, config], "--cores", "2"))
    return folder


def copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.stat().st_size > STAND_IN_OVER:
        target.write_text(f"stand-in for {source.name} ({source.stat().st_size} bytes)\n")
    else:
        shutil.copyfile(source, target)


def populate(template_dir: Path, work: Path, runs: list[str]) -> None:
    """The template's outputs in every run's place; its data set's outputs once. Not copied:
    the synth stage (the sweep reads its own data), compare (run for real), caches, and the
    checkpoints and TensorBoard events training keeps beside its outputs."""
    source = template_dir / "results"
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        if rel.startswith((".cache/", "comparison/", "logs/synth")) or "/train/checkpoints/" in rel:
            continue
        if "/tensorboard/" in rel:
            continue
        if TEMPLATE_RUN not in rel:
            copy_file(path, work / "results" / rel)
            continue
        for run in runs:
            copy_file(path, work / "results" / rel.replace(TEMPLATE_RUN, run))


def run_targets(run: str) -> list[str]:
    """The last files of a run's own jobs (its plots)."""
    plots = ["curves", "confusion", "samples", "per_class", "reliability"]
    return [f"results/{run}/plots/{plot}.png" for plot in plots]


def touch_all(work: Path, config: Path, runs: list[str]) -> None:
    """Every job but compare recorded as done: the data set's first, then the runs' in
    TOUCH_BATCHES parallel processes (each on its own runs, so in order within a run). Targets
    go before the options: `--forcerun` would take them as its own."""
    touch = ["--touch", "--cores", "1", "--nolock"]
    dataset = ["results/dataset/manifest.csv", "results/dataset/cache/32px/stats.json"]
    timed(snakemake(work, [config], *dataset, *touch, "--forceall"))
    batches = [runs[i::TOUCH_BATCHES] for i in range(TOUCH_BATCHES) if runs[i::TOUCH_BATCHES]]
    force = [*touch, "--forcerun", *PER_RUN_RULES]
    commands = [
        snakemake(work, [config], *(t for run in batch for t in run_targets(run)), *force)
        for batch in batches
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        for batch, timing in zip(batches, pool.map(timed, commands), strict=True):
            touched = planned_jobs(timing.stdout)
            if sum(touched.values()) != len(PER_RUN_RULES) * len(batch):
                raise SystemExit(f"--touch of one batch ran {touched}: expected its runs only")


def finished_state(work: Path, config: Path, template_dir: Path) -> list[str]:
    """`work` with every run of `config` done (see the module's docstring); kept if done."""
    runs = run_names(work, config)
    done = work / "finished.yaml"  # the config it was made for (the data's path included)
    if done.exists() and done.read_text() == config.read_text():
        return runs
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    print(f"finished state of {len(runs)} runs in {work} ...", flush=True)
    populate(template_dir, work, runs)
    touch_all(work, config, runs)
    left = planned_jobs(timed(snakemake(work, [config], "-n")).stdout)
    if left != {"all": 1, "compare": 1}:
        raise SystemExit(f"after --touch, {work} still plans {left}, not only compare")
    timed(snakemake(work, [config], "--cores", "2"))
    done.write_text(config.read_text())
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return runs


def noop(work: Path, config: Path, repeats: int) -> list[Timing]:
    """`snakemake` on a finished state; each run must find nothing to do."""
    timings = measure(snakemake(work, [config], "--cores", "2"), repeats)
    for timing in timings:
        if "Nothing to be done" not in timing.stdout or planned_jobs(timing.stdout):
            raise SystemExit(f"the no-op in {work} planned jobs:\n{timing.stdout[-3000:]}")
    return timings


def report(work: Path, config: Path, runs: list[str], repeats: int, limit: float) -> list[Timing]:
    """`make run`'s report command; every run's figures must be in the report. A run past
    `limit` seconds is stopped (and counts as `limit`)."""
    args = ["--report", "results/report.html"]
    args += ["--report-metadata", "results/comparison/report-metadata.json"]
    timings = []
    for _ in range(repeats):
        timings.append(timed(snakemake(work, [config], *args), timeout=limit))
        if timings[-1].timed_out:
            return timings
    html = (work / "results" / "report.html").read_text(errors="replace")
    missing = [run for run in runs if f"{run}/plots/curves.png" not in html]
    if missing:
        raise SystemExit(f"the report lacks {len(missing)} runs' figures, e.g. {missing[0]}")
    return timings


def floor(work: Path, runs: int, repeats: int) -> list[Timing]:
    """`snakemake -n` of a bare Snakefile with as many jobs (a chain of a sweep run's rules,
    one file each, no input functions): what Snakemake itself costs per job."""
    rules = "".join(
        f"rule {name}:\n    input: 'out/{{r}}/{before}.txt'\n    output: 'out/{{r}}/{name}.txt'\n"
        "    shell: 'touch {output}'\n"
        for before, name in zip(["in", *PER_RUN_RULES], PER_RUN_RULES, strict=False)
    )
    snakefile = work / "floor" / "Snakefile"
    snakefile.parent.mkdir(parents=True, exist_ok=True)
    snakefile.write_text(
        f"R = [f'r{{i:04d}}' for i in range({runs})]\n"
        f"rule all:\n    input: expand('out/{{r}}/{PER_RUN_RULES[-1]}.txt', r=R)\n"
        "rule start:\n    output: 'out/{r}/in.txt'\n    shell: 'touch {output}'\n" + rules
    )
    cmd = [str(BIN / "snakemake"), "-s", str(snakefile), "-d", str(snakefile.parent), "-n"]
    return measure(cmd, repeats)


def profile(work: Path, config: Path, out: Path) -> None:
    """cProfile of `snakemake -n` (the main process: parse, DAG, printing) into `out`, and its
    top functions by cumulative time."""
    cmd = snakemake(work, [config], "-n")
    timed([sys.executable, "-m", "cProfile", "-o", str(out), *cmd])
    print(f"\ncProfile of {' '.join(cmd[:1] + cmd[5:])}, in {out}:")
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(40)


def median(timings: list[Timing]) -> Timing:
    walls = [t.wall for t in timings]
    middle = timings[walls.index(statistics.median_low(walls))]
    return Timing(statistics.median(walls), statistics.median(t.cpu for t in timings),
                  middle.load, middle.stdout, any(t.timed_out for t in timings))  # fmt: skip


def snakemake_version() -> str:
    return subprocess.run(
        [str(BIN / "snakemake"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def summary(rows: list[tuple[str, str, list[Timing], str]], images: int) -> None:
    """The block to paste into BENCHMARKS.md."""
    print(f"\nSweeps at scale, {time.strftime('%Y-%m-%d %H:%M')}: {images} images, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, Snakemake {snakemake_version()}, "
          f"load now {load():.2f}\n")  # fmt: skip
    print("| measurement | jobs | median wall | CPU | load before | target | wall/target |")
    print("|---|---|---|---|---|---|---|")
    for name, jobs, timings, target in rows:
        m = median(timings)
        limit = TARGETS.get(target)
        ratio = f"{m.wall / limit:.2f}" if limit else "-"
        walls = ", ".join(f"{'>' * t.timed_out}{t.wall:.1f}" for t in timings)
        if m.timed_out:
            over = f"> {m.wall / limit:.2f}" if limit else "-"
            print(f"| {name}: stopped after {m.wall:.0f} s | {jobs} | > {m.wall:.0f} s | - | "
                  f"{m.load:.2f} | {limit or 0:.0f} s | {over} |")  # fmt: skip
            continue
        print(f"| {name} (runs: {walls}) | {jobs} | {m.wall:.1f} s | {m.cpu:.1f} s | "
              f"{m.load:.2f} | {f'{limit:.0f} s' if limit else '-'} | {ratio} |")  # fmt: skip


def data_folder(work: Path, given: Path | None, images: int) -> Path:
    if given:
        return given.resolve()
    data = work / "data"
    if not (work / "data.txt").exists():
        shutil.rmtree(data, ignore_errors=True)
        make_data(data, images)
        (work / "data.txt").write_text(f"{images} images\n")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder kept between calls (default: temp)")
    parser.add_argument("--data", type=Path, help="an image tree to use instead of drawing one")
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report-repeats", type=int, default=1)
    parser.add_argument("--limit", type=float, default=600, help="seconds a report may take")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the 1,000-run plan here")
    a = parser.parse_args()
    if a.work:
        a.work.mkdir(parents=True, exist_ok=True)
        measure_all(a.work.resolve(), a)
    else:
        with tempfile.TemporaryDirectory(prefix="cvpipe-sweep-") as tmp:
            measure_all(Path(tmp), a)


def measure_all(work: Path, a: argparse.Namespace) -> None:
    data = data_folder(work, a.data, a.images)
    configs = {runs: work / f"sweep{runs}.yaml" for runs in (1000, 100)}
    for runs, path in configs.items():
        write_sweep(path, data, seeds=runs // 50)
    with_extras = work / "sweep1000-extras.yaml"
    write_sweep(with_extras, data, seeds=20, extras=EXTRAS)
    rows = []
    plans = [("1000 runs", configs[1000], "plan"), ("100 runs", configs[100], ""),
             (f"1000 runs with sweep.extras {EXTRAS}", with_extras, "")]  # fmt: skip
    for name, path, target in plans:
        timings = measure(snakemake(work / "plan1000", [path], "-n"), a.repeats)
        jobs = sum(planned_jobs(timings[0].stdout).values())
        rows.append((f"`snakemake -n`, {name}, nothing done", str(jobs), timings, target))
    per_run = len(PER_RUN_RULES)
    rows.append((f"`snakemake -n`, bare Snakefile, 1000 x {per_run} jobs", str(1000 * per_run + 1),
                 floor(work, 1000, a.repeats), ""))  # fmt: skip
    template_dir = template(work)
    finished_state(work / "done100", configs[100], template_dir)
    rows.append(("no-op `snakemake`, 100 runs done", "0",
                 noop(work / "done100", configs[100], a.repeats), "no-op"))  # fmt: skip
    for count in (100, 1000):
        runs = finished_state(work / f"done{count}", configs[count], template_dir)
        timings = report(work / f"done{count}", configs[count], runs, a.report_repeats, a.limit)
        rows.append((f"`snakemake --report`, {count} runs done", "-", timings,
                     "report" if count == 1000 else ""))  # fmt: skip
    summary(rows, a.images)
    if a.profile:
        profile(work / "plan1000", configs[1000], a.profile.resolve())


if __name__ == "__main__":
    main()
