"""Statistics over repeats: runs that differ only in seed are one configuration with a mean, a
sample standard deviation and a 95% t interval per test metric; the configuration is chosen on
validation, never on test; the chart stays readable with 100 runs.

The result files are made by hand (the layout the workflow writes), so every number below can be
checked with a pocket calculator.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from cvpipe import repeats
from cvpipe.cli import main
from cvpipe.compare import SUMMARY_METRICS, VERSIONS, plot_groups
from cvpipe.errors import CvpipeError
from cvpipe.figures import save_figure

T2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom (three seeds)


def _provenance(config: dict, weights: str = "model") -> dict:
    """provenance.json as train writes it, with only what the comparison reads filled in."""
    return {
        "git": {"describe": "v1", "commit": "0" * 40, "changed": [], "changed_count": 0}
        | {"code_changed": []},
        "code": {"fingerprint": "ab" * 32, "package": "src/cvpipe"},
        "container": {"uri": None, "runtime": None, "image": None, "digest": None},
        "data": {"manifest_sha256": "cd" * 32},
        "device": {"type": "cpu", "name": "cpu"},
        "host": "test",
        "versions": {v: "1.0" for v in VERSIONS},
        "training": {"global_batch": 8, "world_size": 1, "amp_dtype": "off"}
        | {"saved_weights": weights},
        "config": config,
    }


def _config(lr: float, seed: int, monitor: str = "val_acc") -> dict:
    return {
        "model": "resnet18", "image_size": 32, "epochs": 2, "lr": lr, "seed": seed,
        "monitor": monitor, "augment": {"preset": "surface", "hflip": None},
    }  # fmt: skip


def _write_run(results: Path, name: str, config: dict, val_acc: float, test: dict) -> None:
    """A finished run whose best epoch (1) scored `val_acc`; epoch 2, worse, is the last row."""
    run = results / name
    (run / "eval").mkdir(parents=True)
    (run / "train").mkdir()
    metrics = {"model": config["model"], "epoch": 1, "macro_roc_auc": 0.95, "log_loss": 0.5}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics | test))
    (run / "eval" / "timing.json").write_text(json.dumps({"inference_images_per_s": 100.0}))
    (run / "provenance.json").write_text(json.dumps(_provenance(config)))
    (run / "train" / "history.csv").write_text(
        "epoch,lr,val_loss,val_acc,val_macro_f1,epoch_seconds\n"
        f"1,{config['lr']},0.4,{val_acc},{val_acc},1.0\n"
        f"2,{config['lr']},0.9,{val_acc - 0.2},{val_acc - 0.2},1.0\n"
    )


def _compare(results: Path, names: list[str], out: Path) -> None:
    args = ["compare", "--experiment", *names]
    inputs = {
        "metrics": "eval/metrics.json", "timing": "eval/timing.json",
        "provenance": "provenance.json", "history": "train/history.csv",
    }  # fmt: skip
    for option, file in inputs.items():
        args += [f"--{option}", *(str(results / n / file) for n in names)]
    outputs = {
        "csv": "comparison.csv", "md": "comparison.md", "html": "comparison.html",
        "png": "comparison.png", "metrics-out": "metrics.json", "groups-csv": "groups.csv",
        "groups-md": "groups.md", "best": "best.json", "report-metadata": "report-metadata.json",
    }  # fmt: skip
    for option, file in outputs.items():
        args += [f"--{option}", str(out / file)]
    args += ["--history-dir", str(out / "history"), "--dpi", "60", "--container", "none"]
    args += ["--stage-code", "plots=plots:0123abcd"]
    assert main(args) == 0


# Configuration A (lr 0.001) is better on validation, B (lr 0.01) on test; C (lr 0.1) ran once.
# The names say nothing about the configuration and the seeds are interleaved.
RUNS = {
    "alpha": (0.001, 0, 0.90, {"accuracy": 0.80, "macro_f1": 0.78}),
    "bravo": (0.01, 0, 0.85, {"accuracy": 0.90, "macro_f1": 0.88}),
    "charlie": (0.001, 1, 0.92, {"accuracy": 0.82, "macro_f1": 0.80}),
    "delta": (0.1, 0, 0.50, {"accuracy": 0.60, "macro_f1": 0.55}),
    "echo": (0.01, 1, 0.86, {"accuracy": 0.91, "macro_f1": 0.90}),
    "foxtrot": (0.001, 2, 0.94, {"accuracy": 0.87, "macro_f1": 0.85}),
    "golf": (0.01, 2, 0.87, {"accuracy": 0.95, "macro_f1": 0.92}),
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repeats")
    for name, (lr, seed, val_acc, test) in RUNS.items():
        _write_run(root / "results", name, _config(lr, seed), val_acc, test)
    _compare(root / "results", list(RUNS), root / "comparison")
    return root / "comparison"


def test_grouped_statistics_equal_hand_computed_values(compared):
    with open(compared / "groups.csv", newline="") as f:
        rows = {row["configuration"]: row for row in csv.DictReader(f)}
    # Ranked on mean validation accuracy: A 0.92, B 0.86, C 0.50.
    assert [(r["rank"], c) for c, r in rows.items()] == [
        ("1", "lr=0.001"), ("2", "lr=0.01"), ("3", "lr=0.1"),
    ]  # fmt: skip
    a, b, c = rows.values()
    assert (a["n_seeds"], a["seeds"], a["runs"]) == ("3", "0 1 2", "alpha charlie foxtrot")
    assert (b["n_seeds"], b["runs"], c["n_seeds"]) == ("3", "bravo echo golf", "1")
    expected = [
        # A, test accuracy 0.80 0.82 0.87: mean 2.49 / 3 = 0.83; squared deviations
        # 0.0009 + 0.0001 + 0.0016 = 0.0026, / 2 = 0.0013, sd sqrt(0.0013) = 0.036056;
        # CI half-width t(0.975, 2) * sd / sqrt(3) = 4.302653 * 0.020817 = 0.089567.
        (a, "test_accuracy", 0.83, 0.036056, 0.089567),
        # A, macro-F1 0.78 0.80 0.85: mean 0.81, deviations -0.03 -0.01 0.04: as above.
        (a, "test_macro_f1", 0.81, 0.036056, 0.089567),
        # A, validation 0.90 0.92 0.94: mean 0.92, sd sqrt(0.0008 / 2) = 0.02,
        # CI 4.302653 * 0.02 / sqrt(3) = 0.049683.
        (a, "val", 0.92, 0.02, 0.049683),
        # B, test accuracy 0.90 0.91 0.95: mean 0.92, squares 0.0004 + 0.0001 + 0.0009 = 0.0014,
        # sd sqrt(0.0007) = 0.026458, CI 4.302653 * 0.026458 / sqrt(3) = 0.065724.
        (b, "test_accuracy", 0.92, 0.026458, 0.065724),
        # B, validation 0.85 0.86 0.87: mean 0.86, sd 0.01, CI 4.302653 * 0.01 / sqrt(3).
        (b, "val", 0.86, 0.01, 0.024841),
        # Every run has ROC-AUC 0.95: no spread, which is a real 0 (three seeds).
        (a, "test_macro_roc_auc", 0.95, 0.0, 0.0),
    ]
    for row, key, mean, sd, ci in expected:
        got = [float(row[f"{key}_{s}"]) for s in ("mean", "std", "ci95")]
        assert got == pytest.approx([mean, sd, ci], abs=1e-6), key
    assert math.isclose(T2 * math.sqrt(0.0013) / math.sqrt(3), 0.089567, abs_tol=1e-6)
    # One seed: a mean, and no spread (n/a, not 0).
    assert (c["test_accuracy_mean"], c["test_accuracy_std"], c["test_accuracy_ci95"]) == (
        "0.6", "n/a", "n/a",
    )  # fmt: skip
    assert c["val_std"] == c["val_ci95"] == "n/a"


def test_best_follows_validation_where_test_disagrees(compared):
    best = json.loads((compared / "best.json").read_text())
    # B has the better test mean (0.92 against 0.83); A the better validation mean.
    assert best["configuration"] == "lr=0.001"
    assert best["chosen_on"] == "validation"
    assert (best["monitor"], best["better"]) == ("val_acc", "higher")
    assert best["runs"] == ["alpha", "charlie", "foxtrot"]
    assert best["seeds"] == [0, 1, 2]
    assert best["settings"]["lr"] == 0.001 and "seed" not in best["settings"]
    assert best["validation"]["mean"] == pytest.approx(0.92)
    test = best["test"]["accuracy"]
    assert (test["n"], test["mean"]) == (3, pytest.approx(0.83))
    assert [test["std"], test["ci95"]] == pytest.approx([0.036056, 0.089567], abs=1e-6)
    assert test["interval95"] == pytest.approx([0.83 - 0.089567, 0.83 + 0.089567], abs=1e-6)


def test_tables_for_people_show_mean_interval_and_na(compared):
    md = (compared / "groups.md").read_text()
    assert "| 1 | lr=0.001 | 3 | 0.9200 ± 0.0497 (sd 0.0200) | 0.8300 ± 0.0896 (sd 0.0361) |" in md
    assert "| 3 | lr=0.1 | 1 | 0.5000 ± n/a (sd n/a) | 0.6000 ± n/a (sd n/a) |" in md
    page = (compared / "comparison.html").read_text()
    assert "Configurations over seeds" in page and "<b>lr=0.001</b>" in page
    # Provenance: what all runs share once, then a row per run with what differs (the config),
    # not a column per run, which 100 runs would make unreadable.
    assert "<h3>The same for every experiment</h3>" in page
    assert "<th>experiment</th><th>config</th></tr>" in page
    # The per-experiment outputs are still there, one row per run.
    with open(compared / "comparison.csv", newline="") as f:
        assert [r["experiment"] for r in csv.DictReader(f)] == list(RUNS)


def test_validation_loss_ranks_lower_first():
    runs = [
        repeats.Run(f"r{i}", _config(lr, seed, "val_loss"), {"val_loss": loss}, {"accuracy": 0.5})
        for i, (lr, seed, loss) in enumerate([(0.1, 0, 0.3), (0.1, 1, 0.5), (0.2, 0, 0.6)])
    ]
    groups = repeats.group_runs(runs, ["accuracy"])
    assert [g.label for g in groups] == ["lr=0.1", "lr=0.2"]
    assert repeats.best_choice(groups, "val_loss")["better"] == "lower"


def test_the_saved_weights_score_counts():
    """A model file holding the moving average is judged by its `ema_val_*` columns."""
    history = "epoch,val_loss,val_acc,val_macro_f1,ema_val_loss,ema_val_acc,ema_val_macro_f1\n"
    history += "1,0.9,0.5,0.5,0.8,0.6,0.6\n2,0.7,0.7,0.7,0.6,0.8,0.8\n"
    assert repeats.validation_scores(history, 2, "ema", "h.csv")["val_acc"] == 0.8
    assert repeats.validation_scores(history, 2, "model", "h.csv")["val_acc"] == 0.7
    with pytest.raises(CvpipeError, match=r"h\.csv has no row for epoch 3"):
        repeats.validation_scores(history, 3, "model", "h.csv")


@pytest.mark.parametrize("df", [*range(1, 61), 100, 1000, 10**6])
def test_t_quantiles_match_scipy(df):
    assert repeats.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)


def test_interval_matches_scipy_for_many_seeds():
    values = [0.5 + 0.01 * ((7 * i) % 13) for i in range(45)]
    s = repeats.summarize(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=stats.sem(values))
    assert s.ci95 == pytest.approx((high - low) / 2, rel=1e-7)


def test_chart_stays_readable_with_100_runs(tmp_path):
    """50 configurations (model x lr) x 2 seeds: the chart shows the top 20 by validation as
    horizontal bars, one label per row, sized so the labels do not overlap."""
    models = ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "mobilenet_v3_large")
    runs = []
    for i in range(50):
        for seed in (0, 1):
            config = _config(10 ** -(1 + i % 10), seed) | {"model": models[i // 10]}
            score = 0.5 + 0.009 * i + 0.01 * seed
            runs.append(
                repeats.Run(f"run{i}-s{seed}", config, {"val_acc": score},
                            {"accuracy": score - 0.1, "macro_f1": score - 0.12})
            )  # fmt: skip
    groups = repeats.group_runs(runs, SUMMARY_METRICS)
    assert len(groups) == 50 and all(len(g.runs) == 2 for g in groups)
    fig = plot_groups(groups, "val_acc")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 20
    # The best on validation at the top: the last model with the smallest lr (run 49).
    assert labels[0] == "mobilenet_v3_large lr=1e-10 (n=2)" == f"{groups[0].label} (n=2)"
    assert "top 20 of 50" in ax.get_title()
    assert fig.get_size_inches()[1] / len(labels) >= 0.4  # inches per row
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
    assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes))
    save_figure(fig, tmp_path / "chart.png", dpi=60)
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_a_best_configuration_of_one_seed_has_no_interval():
    runs = [
        repeats.Run("once", _config(0.1, 0), {"val_acc": 0.9}, {"accuracy": 0.8}),
        repeats.Run("twice-0", _config(0.2, 0), {"val_acc": 0.7}, {"accuracy": 0.9}),
        repeats.Run("twice-1", _config(0.2, 1), {"val_acc": 0.8}, {"accuracy": 0.9}),
    ]
    best = repeats.best_choice(repeats.group_runs(runs, ["accuracy"]), "val_acc")
    assert (best["runs"], best["n_seeds"]) == (["once"], 1)
    assert best["test"]["accuracy"] == {
        "n": 1, "mean": 0.8, "std": None, "ci95": None, "interval95": None,
    }  # fmt: skip
