"""Compare stage: one table and one chart over all experiments.

Writes `comparison.csv` and `comparison.md` (one row per experiment); `groups.csv` and `groups.md`
(one row per configuration: the runs that differ only in seed, with mean, sd and 95% interval of
each test metric, ranked on mean validation score, see `cvpipe.repeats`) and `best.json` (the
configuration chosen on validation, with its test scores); `comparison.html` (both tables plus
each experiment's provenance, for the Snakemake report), `comparison.png` (test accuracy and
macro-F1 of the best configurations by validation, with their intervals), and for DVC
(`dvc metrics diff`, `dvc plots diff`): `metrics.json` (test metrics by experiment) and
`history/<experiment>.csv` (per-epoch curves); and `report-metadata.json`, what ran (container,
data and code fingerprints), for the report's landing page (`snakemake --report ...
--report-metadata`).

It reads the files the workflow's rule declares, each once: per experiment its metrics.json,
timing.json, provenance.json and history.csv (`ExperimentFiles`).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cvpipe import atomic, repeats
from cvpipe.figures import plt, save_figure

COLUMNS = (
    "experiment", "model", "image_size", "epochs", "test_accuracy", "test_macro_f1",
    "test_macro_roc_auc", "best_epoch", "train_seconds", "inference_images_per_s",
)  # fmt: skip
# Test metrics in metrics.json (DVC) and summarised over seeds (groups.csv, best.json).
SUMMARY_METRICS = ("accuracy", "macro_f1", "macro_roc_auc", "log_loss")


@dataclass(frozen=True)
class ExperimentFiles:
    """The result files of one experiment that the comparison reads."""

    metrics: str | Path
    timing: str | Path
    provenance: str | Path
    history: str | Path


@dataclass(frozen=True)
class ExperimentResults:
    """Those files' contents, read once."""

    metrics: dict
    timing: dict
    provenance: dict
    history_csv: str

    @classmethod
    def read(cls, files: ExperimentFiles) -> ExperimentResults:
        return cls(
            metrics=json.loads(Path(files.metrics).read_text()),
            timing=json.loads(Path(files.timing).read_text()),
            provenance=json.loads(Path(files.provenance).read_text()),
            history_csv=Path(files.history).read_text(),
        )

    def run(self, name: str, history_path: str | Path) -> repeats.Run:
        """This experiment as one run of its configuration, for the statistics over seeds."""
        weights = self.provenance.get("training", {}).get("saved_weights", "model")
        validation = repeats.validation_scores(
            self.history_csv, self.metrics["epoch"], weights, str(history_path)
        )
        test = {key: self.metrics.get(key) for key in SUMMARY_METRICS}
        return repeats.Run(name, self.provenance["config"], validation, test)


def experiment_row(name: str, results: ExperimentResults) -> dict:
    """One table row from an experiment's results."""
    metrics, prov = results.metrics, results.provenance
    history = csv.DictReader(io.StringIO(results.history_csv, newline=""))
    auc = metrics["macro_roc_auc"]
    return {
        "experiment": name,
        "model": metrics["model"],
        "image_size": prov["config"]["image_size"],
        "epochs": prov["config"]["epochs"],
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_macro_f1": round(metrics["macro_f1"], 4),
        "test_macro_roc_auc": None if auc is None else round(auc, 4),
        "best_epoch": metrics["epoch"],
        "train_seconds": round(sum(float(r["epoch_seconds"]) for r in history), 1),
        "inference_images_per_s": results.timing["inference_images_per_s"],
    }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], body: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _changes(git: dict) -> str:
    if git.get("changed") is None:
        return "unknown (no git checkout visible to the job)"
    if not git["changed"]:
        return "none"
    listed = "; ".join(f"{c['status']} {c['path']}" for c in git["changed"])
    more = git["changed_count"] - len(git["changed"])
    return listed + (f"; … {more} more" if more > 0 else "")


def _container(p: dict) -> str:
    c = p["container"]
    if not c["uri"] and not c["runtime"]:
        return "none (the local environment)"
    inside = f"{c['runtime']}: {c['image']}" if c["runtime"] else "not detected inside the job"
    return f"{c['uri']} ({inside}; digest {c['digest'] or 'not readable'})"


VERSIONS = ("python", "torch", "torchvision", "cuda", "cudnn", "opencv", "snakemake")


def _version(name: str) -> Callable[[dict], object]:
    return lambda p: p["versions"][name]


def _code_spans(text: str) -> str:
    """Markdown's `code` as HTML, the rest escaped."""
    parts = [html.escape(p) for p in text.split("`")]
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def groups_section(groups: list[repeats.Group], monitor: str) -> str:
    """The grouped table for the report, best on validation first."""
    header, body = repeats.table_cells(groups, monitor)
    best = html.escape(groups[0].label) if groups else "none"
    return (
        f"<h2>Configurations over seeds</h2><p>{_code_spans(repeats.explanation(monitor))}</p>"
        f"<p>Chosen on validation: <b>{best}</b> (results/comparison/best.json).</p>"
        f"{_html_table(header, body)}"
    )


def provenance_tables(
    provenance: dict[str, dict], fields: Mapping[str, Callable[[dict], object]]
) -> str:
    """What every experiment shares, once; then one row per experiment with the fields that
    differ (a table of one column per experiment would not fit 100 runs)."""
    names = list(provenance)
    values = {field: [str(get(provenance[n])) for n in names] for field, get in fields.items()}
    shared = [[field, v[0]] for field, v in values.items() if len(set(v)) == 1]
    differing = [field for field, v in values.items() if len(set(v)) > 1]
    page = (
        f"<h3>The same for every experiment</h3>{_html_table(['', ''], shared)}" if shared else ""
    )
    if differing:
        body = [[n, *(values[field][i] for field in differing)] for i, n in enumerate(names)]
        page += f"<h3>Per experiment</h3>{_html_table(['experiment', *differing], body)}"
    return page


def html_page(
    rows: list[dict],
    provenance: dict[str, dict],
    stage_code: dict[str, str] | None = None,
    groups: str = "",
) -> str:
    """The report's comparison page: `groups` (a `groups_section`), the experiments' table,
    their provenance and the other stages' code fingerprints."""
    fields: dict[str, Callable[[dict], object]] = {
        "git describe": lambda p: p["git"]["describe"],
        "git commit": lambda p: p["git"]["commit"],
        "uncommitted changes": lambda p: _changes(p["git"]),
        "of those, in the training code": lambda p: (
            ", ".join(p["git"]["code_changed"] or []) or "none"
        ),
        "training code": lambda p: f"{p['code']['fingerprint'][:12]} ({p['code']['package']})",
        "container": _container,
        "manifest sha256": lambda p: p["data"]["manifest_sha256"],
        "device": lambda p: f"{p['device']['type']}: {p['device']['name']}",
        "host": lambda p: p["host"],
        **{v: _version(v) for v in VERSIONS},
        "global batch": lambda p: p["training"]["global_batch"],
        "processes": lambda p: p["training"]["world_size"],
        "amp": lambda p: p["training"]["amp_dtype"],
        "config": lambda p: json.dumps(p["config"], sort_keys=True),
    }
    table = [[r[c] for c in COLUMNS] for r in rows]
    code_rows = [[stage, code] for stage, code in (stage_code or {}).items()]
    style = (
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;"
        "max-width:40em;overflow-wrap:anywhere}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>"
        f"{groups}<h2>Experiments</h2>{_html_table(list(COLUMNS), table)}"
        f"<h2>Provenance</h2>{provenance_tables(provenance, fields)}"
        "<h2>Code of the other stages</h2><p>Fingerprints of the cvpipe code each stage ran "
        "(<code>python -m cvpipe code STAGE</code> lists the modules; training's is above, "
        f"per experiment).</p>{_html_table(['stage', 'code fingerprint'], code_rows)}"
        "</body></html>\n"
    )


def report_metadata(
    provenance: dict[str, dict], stage_code: dict[str, str], container: str
) -> dict[str, str]:
    """What ran, as the flat key/value table of the report's landing page: the configured
    image and the one the jobs ran in, the data fingerprint (manifest sha256), the git state and
    the code fingerprint of every stage (training's per experiment, from its provenance)."""

    def one(get) -> str:
        return "; ".join(dict.fromkeys(str(get(p)) for p in provenance.values()))

    return {
        "container image (config)": container,
        "container the jobs ran in": one(_container),
        "data: manifest sha256": one(lambda p: p["data"]["manifest_sha256"]),
        "git": one(lambda p: f"{p['git']['describe']} ({p['git']['commit']})"),
        **{
            f"code: train ({name})": p["code"]["fingerprint"][:12] for name, p in provenance.items()
        },
        **{f"code: {stage}": code for stage, code in stage_code.items()},
    }


CHART_GROUPS = 20  # configurations in the chart; the tables hold them all
ROW_INCHES = 0.42  # the chart's height per configuration (two bars and a label)
LABEL_CHARS = 48


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def plot_groups(groups: list[repeats.Group], monitor: str, top: int = CHART_GROUPS) -> plt.Figure:
    """Horizontal bars of test accuracy and macro-F1, one pair per configuration, the best `top`
    by validation `monitor` from the top down, with 95% intervals as error bars (none for one
    seed); the height grows with the rows, so labels never overlap."""
    shown = groups[:top]
    fig, ax = plt.subplots(figsize=(8.0, 1.4 + ROW_INCHES * len(shown)))
    height = 0.38
    for k, (key, label) in enumerate((("accuracy", "accuracy"), ("macro_f1", "macro-F1"))):
        y = [i + (k - 0.5) * height for i in range(len(shown))]
        stats = [g.test[key] for g in shown]
        ax.barh(y, [s.mean or 0.0 for s in stats], height, label=label)
        for yi, s in zip(y, stats, strict=True):  # the numbers in a column right of 1, clear
            ax.text(1.02, yi, _bar_text(s), va="center", fontsize=7)  # of the error bars
        _error_bars(ax, y, stats)
    names = [f"{_short(g.label)} (n={len(g.runs)})" for g in shown]
    ax.set_yticks(range(len(shown)), names, fontsize=8)
    ax.invert_yaxis()  # the best on validation at the top
    which = f"top {len(shown)} of {len(groups)}" if len(groups) > len(shown) else "all"
    ax.set(xlim=(0, 1.3), xticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("test score (error bars: 95% CI over seeds)")
    ax.set_title(f"Configurations by validation {monitor}: {which}", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # clear of the bars
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _error_bars(ax: plt.Axes, y: list[float], stats: list[repeats.Summary]) -> None:
    """The 95% intervals, drawn within [0, 1] where the scores live (the text beside states
    the whole interval); none for one seed (no spread), rather than a bar of 0."""
    spread = [(yi, s.mean, s.ci95) for yi, s in zip(y, stats, strict=True) if s.ci95 is not None]
    if not spread:
        return
    ys = [yi for yi, _, _ in spread]
    means = [m for _, m, _ in spread if m is not None]
    low = [min(c, m) for _, m, c in spread if m is not None and c is not None]
    high = [min(c, 1.0 - m) for _, m, c in spread if m is not None and c is not None]
    ax.errorbar(means, ys, xerr=[low, high], fmt="none", ecolor="black", capsize=2, lw=0.8)


def _bar_text(s: repeats.Summary) -> str:
    if s.mean is None:
        return repeats.NA
    return f"{s.mean:.3f}" + ("" if s.ci95 is None else f" ± {s.ci95:.3f}")


def write_groups(groups: list[repeats.Group], monitor: str, out: Mapping[str, str | Path]) -> None:
    """groups.csv, groups.md and best.json: the statistics over seeds and the validation choice."""
    columns = repeats.group_columns(groups, SUMMARY_METRICS)
    atomic.write_csv(out["groups_csv"], columns, repeats.group_rows(groups, monitor))
    atomic.write_text(out["groups_md"], repeats.markdown(groups, monitor))
    atomic.write_json(out["best"], repeats.best_choice(groups, monitor))


def compare(
    experiments: dict[str, ExperimentFiles],
    out: Mapping[str, str | Path],
    dpi: int,
    stage_code: dict[str, str] | None = None,
    container: str = "",
) -> list[dict]:
    """Build the comparison of `{experiment: its result files}`.

    `out` maps csv/md/html/png/metrics/report_metadata/groups_csv/groups_md/best to paths and
    history_dir to a folder;
    `stage_code` maps stage names to the code fingerprints the workflow ran them with, and
    `container` is the configured image (both for the report).
    """
    results = {name: ExperimentResults.read(files) for name, files in experiments.items()}
    rows = [experiment_row(name, r) for name, r in results.items()]
    atomic.write_csv(out["csv"], COLUMNS, rows)
    atomic.write_text(out["md"], markdown_table(rows))
    runs = [r.run(name, experiments[name].history) for name, r in results.items()]
    monitor = repeats.ranking_monitor(runs)
    groups = repeats.group_runs(runs, SUMMARY_METRICS)
    write_groups(groups, monitor, out)
    provenance = {name: r.provenance for name, r in results.items()}
    page = html_page(rows, provenance, stage_code, groups_section(groups, monitor))
    atomic.write_text(out["html"], page)
    save_figure(plot_groups(groups, monitor), out["png"], dpi)
    for name, r in results.items():
        atomic.write_text(Path(out["history_dir"]) / f"{name}.csv", r.history_csv)
    summary = {
        name: {key: r.metrics[key] for key in SUMMARY_METRICS} for name, r in results.items()
    }
    atomic.write_json(out["metrics"], summary)
    # JSON is YAML, which is what Snakemake reads (yte) from --report-metadata.
    metadata = report_metadata(provenance, stage_code or {}, container)
    atomic.write_json(out["report_metadata"], metadata)
    return rows
