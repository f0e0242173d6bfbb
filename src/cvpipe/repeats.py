"""Statistics over repeats: runs whose resolved training settings differ only in `seed` form one
configuration (a group), and each group gets, per metric, the number of seeds, the mean, the
sample standard deviation and the half-width of a 95% confidence interval (Student's t).

Groups are ranked on their mean validation score (the experiments' `monitor`: `val_acc` and
`val_macro_f1` higher is better, `val_loss` lower), never on test, and `best_choice` states the
winner with its test scores. A group of one run has no spread: its std and interval are None
(shown as n/a), not 0.

Plain Python (no torch, no scipy, no plotting): the compare stage imports it, and so can a reader
of `results/comparison/best.json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvpipe.config import NAME_ALIASES
from cvpipe.errors import CvpipeError

# scipy.stats.t.ppf(0.975, df) for df = 1..30, to 6 decimals (scipy 1.x; tests/test_repeats.py
# checks every entry against scipy).
T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z975 = 1.959963984540054  # the standard normal's 0.975 quantile

VALIDATION_MONITORS = ("val_acc", "val_macro_f1", "val_loss")
LOWER_IS_BETTER = frozenset({"val_loss"})
# A group's label names settings by the sweep run names' short names (config.NAME_ALIASES).


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (a 95% two-sided interval).

    df 1..30: the table above. Beyond: the Cornish-Fisher expansion of t in the normal quantile,
    Abramowitz & Stegun 26.7.5 (four terms), off by less than 3e-8 there.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Summary:
    """One metric over a group's runs. `std` is the sample standard deviation (n - 1) and
    `ci95` the half-width of the 95% interval of the mean, t(0.975, n - 1) * std / sqrt(n); both
    None for one run. All None where a run lacks the metric (e.g. ROC-AUC of a one-class test)."""

    n: int
    mean: float | None
    std: float | None
    ci95: float | None

    def as_dict(self) -> dict[str, Any]:
        """The statistics, and the interval itself: [mean - ci95, mean + ci95] (or None)."""
        interval = None
        if self.mean is not None and self.ci95 is not None:
            interval = [self.mean - self.ci95, self.mean + self.ci95]
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": self.ci95} | {
            "interval95": interval
        }


def summarize(values: Sequence[float | None]) -> Summary:
    n = len(values)
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if n == 0 or len(numbers) < n:
        return Summary(n, None, None, None)
    mean = statistics.fmean(numbers)
    if n < 2:
        return Summary(n, mean, None, None)
    std = statistics.stdev(numbers)  # divides by n - 1
    return Summary(n, mean, std, t_quantile_975(n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class Run:
    """One finished run: its resolved training settings (provenance.json's `config`), the
    validation scores of the weights its model file holds (at the best epoch) and its test
    metrics."""

    name: str
    config: Mapping[str, Any]
    validation: Mapping[str, float]
    test: Mapping[str, float | None]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def validation_scores(history_csv: str, epoch: int, weights: str, source: str) -> dict[str, float]:
    """The `val_*` scores in history.csv's row of `epoch`, of the model's weights or, where the
    model file holds the moving average (`weights` "ema"), of the `ema_val_*` columns."""
    prefix = "ema_" if weights == "ema" else ""
    for row in csv.DictReader(io.StringIO(history_csv, newline="")):
        if row.get("epoch") == str(epoch):
            try:
                return {key: float(row[prefix + key]) for key in VALIDATION_MONITORS}
            except (KeyError, ValueError) as e:
                raise CvpipeError(
                    f"{source}: epoch {epoch} has no readable {prefix}val_* column ({e}); "
                    "rerun the experiment's training"
                ) from None
    raise CvpipeError(
        f"{source} has no row for epoch {epoch}, the best epoch its metrics.json names: "
        "the history and the evaluation come from different runs; rerun the experiment"
    )


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (`augment.preset`), as a sweep's grid writes them."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _settings(run: Run) -> dict[str, Any]:
    return {k: v for k, v in _flat(run.config).items() if k != "seed"}


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Group:
    """Runs whose settings differ only in `seed`, with their statistics."""

    label: str
    settings: dict[str, Any]  # flat (dotted keys), without seed
    varying: dict[str, Any]  # those settings that differ between the groups compared
    runs: tuple[Run, ...]
    validation: Summary  # of the ranking monitor
    test: dict[str, Summary]

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


def ranking_monitor(runs: Sequence[Run]) -> str:
    """The validation metric groups are ranked on: the experiments' `monitor`, or, where they
    differ, the one most of them use (a tie: the first run's)."""
    monitors = [str(r.config.get("monitor", "val_acc")) for r in runs]
    chosen = max(dict.fromkeys(monitors), key=monitors.count)
    if chosen not in VALIDATION_MONITORS:
        raise CvpipeError(f"monitor {chosen!r} is not one of {VALIDATION_MONITORS}")
    return chosen


def _label(settings: dict[str, Any], varying: list[str]) -> str:
    if not varying:
        return str(settings.get("model", "all runs"))
    parts = [
        _format(settings.get(k))
        if k == "model"
        else f"{NAME_ALIASES.get(k, k.split('.')[-1])}={_format(settings.get(k))}"
        for k in varying
    ]
    return " ".join(parts)


def group_runs(runs: Sequence[Run], metrics: Sequence[str]) -> list[Group]:
    """Runs grouped on their settings without `seed`, ranked best first on the mean validation
    `ranking_monitor` (a group without that mean last; ties keep the runs' order)."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        members.setdefault(json.dumps(_settings(run), sort_keys=True, default=str), []).append(run)
    settings = [_settings(m[0]) for m in members.values()]
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    varying.sort(key=lambda k: (k != "model", k))  # the model first
    monitor = ranking_monitor(runs)
    groups = [
        Group(
            label=_label(s, varying),
            settings=s,
            varying={k: s.get(k) for k in varying},
            runs=tuple(m),
            validation=summarize([r.validation.get(monitor) for r in m]),
            test={key: summarize([r.test.get(key) for r in m]) for key in metrics},
        )
        for s, m in zip(settings, members.values(), strict=True)
    ]
    sign = 1.0 if monitor in LOWER_IS_BETTER else -1.0
    return sorted(
        groups,
        key=lambda g: (g.validation.mean is None, sign * (g.validation.mean or 0.0)),
    )


def best_choice(groups: Sequence[Group], monitor: str) -> dict[str, Any]:
    """best.json: the group with the best mean validation `monitor` (`groups` ranked by
    `group_runs`), its settings, runs and test scores with their 95% intervals."""
    best = groups[0]
    return {
        "chosen_on": "validation",
        "monitor": monitor,
        "better": "lower" if monitor in LOWER_IS_BETTER else "higher",
        "configuration": best.label,
        "varying": best.varying,
        "settings": best.settings,
        "n_seeds": len(best.runs),
        "seeds": best.seeds,
        "runs": [r.name for r in best.runs],
        "validation": best.validation.as_dict(),
        "test": {key: s.as_dict() for key, s in best.test.items()},
        "interval": "95% confidence interval of the mean: mean ± ci95, "
        "ci95 = t(0.975, n-1) * std / sqrt(n), std with n-1; null with one seed",
        "configurations_compared": len(groups),
    }


NA = "n/a"  # a statistic one seed cannot give (or a metric a run lacks)


def _number(value: float | None, digits: int) -> float | str:
    return NA if value is None else round(value, digits)


def group_columns(groups: Sequence[Group], metrics: Sequence[str]) -> list[str]:
    """groups.csv's columns: rank, label, each varying setting, seeds, the ranking validation
    score, each test metric's mean/std/ci95, and the runs."""
    varying = list(groups[0].varying) if groups else []
    stats = ("mean", "std", "ci95")
    return [
        "rank", "configuration", *varying, "n_seeds", "seeds", "ranked_on",
        *(f"val_{s}" for s in stats), *(f"test_{m}_{s}" for m in metrics for s in stats), "runs",
    ]  # fmt: skip


def group_rows(groups: Sequence[Group], monitor: str, digits: int = 6) -> list[dict[str, Any]]:
    """One row per group, best on validation first; n/a where a statistic does not exist."""
    rows = []
    for rank, g in enumerate(groups, start=1):
        row: dict[str, Any] = {"rank": rank, "configuration": g.label, **g.varying}
        row |= {"n_seeds": len(g.runs), "seeds": " ".join(str(s) for s in g.seeds)}
        row["ranked_on"] = monitor
        for stat in ("mean", "std", "ci95"):
            row[f"val_{stat}"] = _number(getattr(g.validation, stat), digits)
        for key, s in g.test.items():
            for stat in ("mean", "std", "ci95"):
                row[f"test_{key}_{stat}"] = _number(getattr(s, stat), digits)
        row["runs"] = " ".join(r.name for r in g.runs)
        rows.append(row)
    return rows


def cell(s: Summary) -> str:
    """`mean ± ci95 (sd std)` to 4 decimals; n/a for what one seed cannot give."""
    if s.mean is None:
        return NA
    if s.ci95 is None or s.std is None:
        return f"{s.mean:.4f} ± {NA} (sd {NA})"
    return f"{s.mean:.4f} ± {s.ci95:.4f} (sd {s.std:.4f})"


def table_cells(groups: Sequence[Group], monitor: str) -> tuple[list[str], list[list[str]]]:
    """The grouped table for people (Markdown, HTML): header and rows, best first."""
    metrics = list(groups[0].test) if groups else []
    header = ["rank", "configuration", "seeds", f"validation {monitor}"]
    header += [f"test {m}" for m in metrics] + ["runs"]
    body = [
        [str(rank), g.label, str(len(g.runs)), cell(g.validation)]
        + [cell(g.test[m]) for m in metrics]
        + [", ".join(r.name for r in g.runs)]
        for rank, g in enumerate(groups, start=1)
    ]
    return header, body


def explanation(monitor: str) -> str:
    direction = "lower" if monitor in LOWER_IS_BETTER else "higher"
    return (
        f"Configurations (runs that differ only in `seed`) ranked on their mean validation "
        f"`{monitor}` ({direction} is better), never on test. Each cell: mean ± the half-width "
        "of its 95% confidence interval (Student's t, n - 1 degrees of freedom), and sd, the "
        "sample standard deviation; n/a where one seed gives no spread."
    )


def markdown(groups: Sequence[Group], monitor: str) -> str:
    header, body = table_cells(groups, monitor)
    lines = [explanation(monitor), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"
