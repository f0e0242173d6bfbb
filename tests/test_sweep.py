"""Sweeps: a `sweep:` block expands into named runs that the workflow trains like experiments.

The names and checks are unit-tested on cvpipe.config (expand_sweep, run_name, config_errors);
what a user sees goes through real snakemake: the plan of a 2 x 2 x 3 sweep beside the named
experiments, a third learning rate that trains 6 runs more and reruns none of a finished
sweep, and a misspelt swept key named with a suggestion.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, EXPERIMENTS, REPO, snakemake

from cvpipe.config import (
    NAME_CAP,
    coerce_strings,
    config_errors,
    expand_sweep,
    experiment_config,
    experiments,
    load_configs,
    run_name,
    run_names_pattern,
    runs_making,
    with_defaults,
)
from cvpipe.errors import CvpipeError
from cvpipe.modelnames import model_errors

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
EXAMPLE = REPO / "config" / "sweep-example.yaml"
# The schema's pattern for an experiment's name: a sweep run's name must fit it too.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

GRID = {"lr": [0.001, 0.003], "image_size": [32, 24]}
SWEEP = {"base": {"epochs": 1}, "grid": GRID, "seeds": [0, 1, 2]}
RUNS = [
    f"resnet18-lr{lr}-px{px}-s{seed}"
    for lr in ("0.001", "0.003")
    for px in (32, 24)
    for seed in (0, 1, 2)
]
THIRD_LR = [f"resnet18-lr0.01-px{px}-s{seed}" for px in (32, 24) for seed in (0, 1, 2)]


def tiny_config(sweep: dict | None, **top) -> dict:
    """config.yaml + tiny.yaml, then `sweep` (and other top-level keys); defaults filled."""
    return with_defaults({**load_configs(CONFIGS), "sweep": sweep, **top}, SCHEMA)


def errors(sweep: dict) -> list[str]:
    return config_errors({**load_configs(CONFIGS), "sweep": sweep}, SCHEMA)


# --- expansion and names --------------------------------------------------------------------


def test_a_2x2x3_sweep_is_12_runs_with_readable_names():
    runs = expand_sweep(tiny_config(SWEEP))
    assert list(runs) == RUNS  # the grid's order, the seeds innermost
    assert runs["resnet18-lr0.003-px24-s1"] == {
        "epochs": 1,
        "lr": 0.003,
        "image_size": 24,
        "seed": 1,
    }


def test_the_example_config_is_valid_and_names_what_it_says():
    config = load_configs([REPO / "config" / "config.yaml", EXAMPLE])
    assert config_errors(config, SCHEMA) == []
    runs = list(experiments(with_defaults(config, SCHEMA)))
    assert len(runs) == 12 and runs[0] == "resnet18-lr0.001-px32-s0"
    assert runs[-1] == "resnet18-lr0.003-px48-s2"
    text = EXAMPLE.read_text()
    assert runs[0] in text and runs[-1] in text


def test_settings_stack_train_synth_base_grid_seed():
    sweep = {
        "base": {"lr": 0.5, "epochs": 1, "augment": {"rotate": 10}},
        "grid": {"augment.preset": ["natural"], "epochs": [2]},
        "seeds": [7],
    }
    config = tiny_config(sweep)
    (name,) = expand_sweep(config)
    assert name == "resnet18-presetnatural-ep2-s7"
    settings = experiment_config(config, name)
    assert settings["batch_size"] == 8  # tiny.yaml's train
    assert settings["lr"] == 0.5  # base over train
    assert settings["epochs"] == 2  # the grid over base
    assert settings["augment"]["preset"] == "natural"  # the grid over synth.train's surface
    assert settings["augment"]["rotate"] == 10  # nested keys merge
    assert settings["seed"] == 7


def test_named_experiments_and_the_sweep_side_by_side():
    config = tiny_config({"grid": {"lr": [0.01]}, "seeds": [0]})
    assert list(experiments(config)) == [*EXPERIMENTS, "resnet18-lr0.01-s0"]
    only = tiny_config({"grid": {"model": ["resnet34"]}, "seeds": [3]}, experiments=None)
    assert list(experiments(only)) == ["resnet34-s3"]  # the model comes first, bare
    with pytest.raises(CvpipeError, match="no runs"):
        experiments(tiny_config(None, experiments=None))


def test_adding_a_value_adds_runs_and_changes_none():
    before = expand_sweep(tiny_config(SWEEP))
    grown = {**SWEEP, "grid": {**GRID, "lr": [0.001, 0.003, 0.01]}}
    after = expand_sweep(tiny_config(grown))
    assert list(after) == RUNS + THIRD_LR
    assert {name: after[name] for name in before} == before
    # a value inserted first reorders the runs, renames none
    first = {**SWEEP, "grid": {**GRID, "lr": [0.0001, 0.001, 0.003]}}
    assert set(before) < set(expand_sweep(tiny_config(first)))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.001, "0.001"),
        (1e-4, "0.0001"),
        (3e-05, "3e-05"),
        (0.1 + 0.2, "0.30000000000000004"),  # exact: `g` alone would say 0.3
        (2.0, "2"),
        (1e16, "1e16"),  # no `+`: names keep to [A-Za-z0-9._-]
        (32, "32"),
        (True, "true"),
        (None, "none"),
        ([0.25, 1.0], "0.25_1"),
    ],
)
def test_values_are_short_and_exact(value, text):
    assert run_name("resnet18", [("x", value)], 0) == f"resnet18-x{text}-s0"


def test_special_characters_are_replaced_and_never_make_two_values_alike():
    names = [
        run_name("resnet18", [("weights", path)], 0)
        for path in ("/models/my net.pt", "/models/my_net.pt", "_models_my_net.pt")
    ]
    assert all(NAME.fullmatch(name) for name in names), names
    assert len(set(names)) == 3
    assert names[2] == "resnet18-weights_models_my_net.pt-s0"  # nothing to replace: no hash
    assert re.fullmatch(r"resnet18-weights_models_my_net\.pt_[0-9a-f]{6}-s0", names[1])


def test_long_names_are_capped_with_a_hash_before_the_seed():
    values = [("weights", "w" * 60), ("preset", "natural"), ("lr", 0.001)]
    names = [run_name("convnext_tiny", values, seed) for seed in (0, 1)]
    assert all(len(name) <= NAME_CAP and NAME.fullmatch(name) for name in names)
    # the same, on every machine and Python (sha256, not hash())
    assert names[0] == f"convnext_tiny-weights{'w' * 47}-348ad4dd-s0"
    assert names[1] == names[0].replace("-s0", "-s1")  # the seeds of one setting share it
    # runs that differ only past the cap differ in the hash
    other = run_name("convnext_tiny", [*values[:2], ("lr", 0.002)], 0)
    assert other != names[0] and other[:-12] == names[0][:-12]
    assert len(run_name("resnet18", [("lr", 0.001)], 12345)) < NAME_CAP  # short ones stay


@pytest.mark.parametrize(
    "sweep",
    [
        SWEEP,
        {"grid": {"model": ["resnet18", "mobilenet_v3_small"], "lr": [0.1, 0.01]}, "seeds": [0]},
        # names capped with a hash: the pattern lists them instead of a product
        {"grid": {"weights": ["w" * 60 + ".pt"], "lr": [0.1, 0.2]}, "seeds": [0, 1]},
    ],
)
def test_the_run_wildcard_matches_exactly_the_runs(sweep):
    """The `experiment` wildcard's constraint (a short product pattern for a big sweep, so that
    `snakemake -n` stays fast): every run and named experiment, and nothing one character off."""
    config = tiny_config(sweep)
    pattern = re.compile(run_names_pattern(config))
    names = list(experiments(config))
    assert len(names) == len(config["experiments"]) + len(expand_sweep(config))
    for name in names:
        assert pattern.fullmatch(name), name
        for near in (name + "0", name[:-1], "x" + name, name.replace("-", "_", 1)):
            assert near in names or not pattern.fullmatch(near), near


# --- checks --------------------------------------------------------------------------------


def test_misspelt_or_wrong_sweep_keys_are_named():
    assert errors({"grid": {"lrr": [0.1]}, "seeds": [0]}) == [
        "sweep.grid.lrr: unknown key (did you mean 'lr'?)"
    ]
    assert errors({"grid": {"augment.presett": ["natural"]}, "seeds": [0]}) == [
        "sweep.grid.augment.presett: unknown key (did you mean 'augment.preset'?)"
    ]
    assert errors({"grid": {"augment": [{"preset": "natural"}]}, "seeds": [0]}) == [
        "sweep.grid.augment: sweep one of its keys, dotted: augment.<key>: [values]"
    ]
    assert errors({"base": {"lrr": 0.1}, "seeds": [0]}) == [
        "sweep.base.lrr: unknown key (did you mean 'lr'?)"
    ]
    assert errors({"grid": {"lr": [0.1, "fast"]}, "seeds": [0]}) == [
        "sweep.grid.lr[1]: 'fast' is not of type 'number'"
    ]
    assert errors({"grid": {"augment.preset": ["photo"]}, "seeds": [0]}) == [
        "sweep.grid.augment.preset[0]: 'photo' is not one of ['natural', 'surface']"
    ]
    assert errors({"grid": {"lr": []}, "seeds": []}) == [
        "sweep.grid.lr: [] should be non-empty",
        "sweep.seeds: [] should be non-empty",
    ]
    assert errors({"grid": {"lr": [0.1]}}) == ["sweep: 'seeds' is a required property"]
    assert errors({"grid": {"seed": [1, 2]}, "seeds": [0]}) == [
        "sweep.grid.seed: the seeds of a sweep are sweep.seeds: list them there"
    ]
    assert errors({"grid": {"lr": [0.1]}, "seeds": [0], "name_keys": {"lrx": "l"}}) == [
        "sweep.name_keys.lrx: not a key of sweep.grid (did you mean 'lr'?)"
    ]


def test_two_runs_with_one_name_are_an_error_naming_both():
    with pytest.raises(
        CvpipeError, match=re.escape("experiments.resnet18-lr0.01-s0 is also the name")
    ):
        experiments(
            tiny_config(
                {"grid": {"lr": [0.01]}, "seeds": [0]}, experiments={"resnet18-lr0.01-s0": {}}
            )
        )
    # 1 and 1.0 (which the schema's uniqueItems rejects) would share a name
    with pytest.raises(CvpipeError, match=re.escape("lr=1 and with lr=1.0 get the same name")):
        expand_sweep(tiny_config({"grid": {"lr": [1, 1.0]}, "seeds": [0]}))


def test_an_unknown_swept_model_is_named_where_it_is_written():
    """Not per expanded run (experiments.resnet_18-s0.model): the grid's item, with close names."""
    grid = tiny_config({"grid": {"model": ["resnet18", "resnet_18"]}, "seeds": [0, 1]})
    assert model_errors(grid) == [
        "sweep.grid.model[1]: 'resnet_18' (2 runs of the sweep) is not a torchvision "
        "classification model (did you mean 'resnet18', 'resnet152', 'resnet101'?): use a name "
        "from torchvision.models.list_models()."
    ]
    base = tiny_config({"base": {"model": "resnet_18"}, "grid": {"lr": [0.1, 0.01]}, "seeds": [0]})
    assert [line.split(" is not")[0] for line in model_errors(base)] == [
        "sweep.base.model: 'resnet_18' (2 runs of the sweep)"
    ]
    assert model_errors(tiny_config({"grid": {"model": ["vit_b_16"]}, "seeds": [0]})) == []


def test_sweep_lists_from_the_command_line_are_numbers_where_the_schema_says():
    """`--config` reads `[0.1, 0.01]` as strings (snakemake.cli.parse_config: YAML BaseLoader)."""
    config = {"sweep": {"grid": {"lr": ["0.1", "1e-3"], "augment.preset": ["natural"]}}}
    config["sweep"]["seeds"] = ["0", "1"]
    sweep = coerce_strings(config, SCHEMA)["sweep"]
    assert sweep == {
        "grid": {"lr": [0.1, 0.001], "augment.preset": ["natural"]},
        "seeds": [0, 1],
    }
    wrong = coerce_strings({"sweep": {"grid": {"lr": ["fast"]}, "seeds": ["0"]}}, SCHEMA)
    assert config_errors({**load_configs(CONFIGS), **wrong}, SCHEMA) == [
        "sweep.grid.lr[0]: 'fast' is not of type 'number'"  # named, as from a config file
    ]


# --- the workflow ---------------------------------------------------------------------------


def sweep_file(folder: Path, sweep: dict, name: str = "sweep.yaml", **top) -> Path:
    """A config file with `sweep` (and other top-level keys), laid over CONFIGS."""
    path = folder / name
    path.write_text(yaml.safe_dump({"sweep": sweep, **top}, sort_keys=False))
    return path


def plan(workdir: Path, configfile: Path) -> tuple[dict[str, int], list[str]]:
    """A dry run's jobs per rule, and the experiments it would train."""
    out = snakemake(workdir, "--dry-run", configfiles=[*CONFIGS, configfile]).stdout
    lines = out.splitlines()
    jobs: dict[str, int] = {}
    if "Job stats:" in lines:
        for line in lines[lines.index("Job stats:") + 3 :]:
            parts = line.split()
            if len(parts) != 2 or parts[0] == "total" or not parts[1].isdigit():
                break
            jobs[parts[0]] = int(parts[1])
    return jobs, re.findall(r"output: results/([^/\s]+)/train/model\.pt", out)


def test_sweep_runs_make_grad_cam_and_model_cards_only_where_extras_asks():
    config = tiny_config(SWEEP)
    runs = list(experiments(config))
    assert runs_making(config, runs, "gradcam") == list(EXPERIMENTS)
    asked = tiny_config({**SWEEP, "extras": ["model_card"]})
    assert runs_making(asked, runs, "model_card") == [*EXPERIMENTS, *RUNS]
    assert runs_making(asked, runs, "gradcam") == list(EXPERIMENTS)
    assert errors({**SWEEP, "extras": ["gradcams"]}) == [
        "sweep.extras[0]: 'gradcams' is not one of ['gradcam', 'model_card']"
    ]


@pytest.mark.slow
def test_the_workflow_plans_the_sweep_beside_the_experiments(tmp_path):
    """Every run is trained, evaluated and plotted; Grad-CAM and model cards are the named
    experiments' (a big sweep's plan and report stay small) unless sweep.extras asks."""
    jobs, trained = plan(tmp_path, sweep_file(tmp_path, SWEEP))
    runs = 12 + len(EXPERIMENTS)
    assert jobs["train"] == jobs["evaluate"] == jobs["plots"] == runs
    assert sorted(trained) == sorted([*EXPERIMENTS, *RUNS])
    assert jobs["gradcam"] == jobs["model_card"] == len(EXPERIMENTS)
    extras = sweep_file(tmp_path, {**SWEEP, "extras": ["gradcam", "model_card"]}, "extras.yaml")
    jobs, _ = plan(tmp_path, extras)
    assert jobs["gradcam"] == jobs["model_card"] == runs


@pytest.mark.slow
def test_a_third_learning_rate_trains_6_runs_more_and_reruns_none(tmp_path):
    """A real 1-epoch tiny sweep trains the 12 runs, then the grown grid plans only the new."""
    config = sweep_file(tmp_path, SWEEP, experiments=None)
    models = [f"results/{name}/train/model.pt" for name in RUNS]
    snakemake(tmp_path, *models, "--set-threads", "train=1", configfiles=[*CONFIGS, config])
    assert all((tmp_path / model).is_file() for model in models)
    assert "train" not in plan(tmp_path, config)[0]
    grown = {**SWEEP, "grid": {**GRID, "lr": [0.001, 0.003, 0.01]}}
    jobs, trained = plan(tmp_path, sweep_file(tmp_path, grown, "grown.yaml", experiments=None))
    assert jobs["train"] == 6
    assert sorted(trained) == sorted(THIRD_LR)


@pytest.mark.slow
def test_a_misspelt_swept_key_stops_the_workflow_naming_it(tmp_path):
    typo = sweep_file(tmp_path, {"grid": {"lrr": [0.001, 0.01]}, "seeds": [0, 1]})
    proc = snakemake(tmp_path, "--dry-run", configfiles=[*CONFIGS, typo], check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sweep.grid.lrr: unknown key (did you mean 'lr'?)" in output
    assert "Traceback" not in output
    clash = sweep_file(
        tmp_path, {"grid": {"lr": [0.01]}, "seeds": [0]}, experiments={"resnet18-lr0.01-s0": {}}
    )
    proc = snakemake(tmp_path, "--dry-run", configfiles=[*CONFIGS, clash], check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "experiments.resnet18-lr0.01-s0 is also the name of a sweep run" in output


@pytest.mark.slow
def test_a_sweep_given_with_config_plans_runs_named_by_numbers(tmp_path):
    """`snakemake -n --config 'sweep={...}'` as the README shows it: numbers, not strings."""
    sweep = "sweep={grid: {lr: [0.1, 0.01]}, seeds: [0, 1]}"
    out = snakemake(tmp_path, "--dry-run", "--config", sweep, "experiments=").stdout
    trained = re.findall(r"output: results/([^/\s]+)/train/model\.pt", out)
    assert sorted(trained) == [
        f"resnet18-lr{lr}-s{seed}" for lr in ("0.01", "0.1") for seed in (0, 1)
    ]
    typo = "sweep={grid: {model: [resnet18, resnet_18]}, seeds: [0]}"
    proc = snakemake(tmp_path, "--dry-run", "--config", typo, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert "sweep.grid.model[1]: 'resnet_18' (1 run of the sweep) is not a torchvision" in output
    assert "did you mean 'resnet18'" in output and "experiments.resnet_18" not in output
