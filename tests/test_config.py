"""Config: the schema, the documented config file and the code agree; typos are named."""

import dataclasses
import json
import re

import yaml
from helpers import CONFIGS, REPO, planned_jobs, snakemake

from cvpipe.augment import AugmentPolicy
from cvpipe.config import config_errors, experiment_config
from cvpipe.train import TrainConfig

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_complete():
    config = load_config()
    assert config_errors(config, SCHEMA) == []
    for name in config["experiments"]:
        TrainConfig.from_dict(experiment_config(config, name))  # every experiment resolves


def test_schema_matches_the_code():
    schema = yaml.safe_load(SCHEMA.read_text())
    train_keys = set(schema["$defs"]["train"]["properties"])
    assert train_keys == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(schema["$defs"]["augment"]["properties"]) == {
        f.name for f in dataclasses.fields(AugmentPolicy)
    }
    assert set(load_config()["train"]) == train_keys  # config.yaml documents every key


def test_experiment_overrides_merge_nested_keys():
    config = load_config()
    config["experiments"]["x"] = {"lr": 0.1, "augment": {"rotate": 30}}
    merged = experiment_config(config, "x")
    assert merged["lr"] == 0.1
    assert merged["augment"]["rotate"] == 30
    assert merged["augment"]["hflip"] is True  # untouched keys keep the default
    assert config["train"]["augment"]["rotate"] == 0  # the defaults are not modified


def test_misspelt_key_stops_the_workflow_naming_it(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("train:\n  epoch: 3\nexperiments:\n  resnet18:\n    lrate: 0.1\n")
    proc = snakemake(
        tmp_path, "--dry-run", configfiles=[REPO / "config" / "config.yaml", bad], check=False
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in output
    assert "experiments.resnet18.lrate: unknown key (allowed: model, weights," in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) < 12


def test_missing_user_data_folder_is_named(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("data:\n  root: my-images\n")
    proc = snakemake(
        tmp_path, "--dry-run", configfiles=[REPO / "config" / "config.yaml", cfg], check=False
    )
    assert proc.returncode != 0
    assert "data.root 'my-images' is not a folder" in proc.stdout + proc.stderr


def test_pointing_one_key_at_own_data_runs_on_it(tmp_path):
    """Any ImageFolder tree is used by setting data.root; the built-in set is not drawn."""
    import shutil

    from cvpipe.synth import make_dataset

    make_dataset(tmp_path / "drawn", images_per_class=8, size=32, seed=5)
    own = tmp_path / "parts"
    own.mkdir()
    shutil.move(tmp_path / "drawn" / "ok", own / "good")
    shutil.move(tmp_path / "drawn" / "dent", own / "bad")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"data:\n  root: {own}\n")
    jobs = planned_jobs(tmp_path, configfiles=[*CONFIGS, cfg])
    assert "synth" not in jobs
    assert jobs["index"] == 1


def test_a_key_the_config_leaves_out_takes_the_schema_default_in_the_job(tmp_path):
    """snakemake's validate fills missing keys from the schema's defaults (set_default=True),
    for `train` and its augmentation, without filling the experiments' overrides."""
    from cvpipe.config import deep_merge
    from cvpipe.synth import make_dataset

    make_dataset(tmp_path / "data", images_per_class=8, size=32, seed=5)
    config = deep_merge(load_config(), yaml.safe_load(CONFIGS[1].read_text()))
    config["data"]["root"] = str(tmp_path / "data")
    del config["train"]["epochs"], config["train"]["augment"]["rot90"], config["plots"]
    config["experiments"] = {"small": {"augment": {"rotate": 5}}}
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(config))
    out = snakemake(
        tmp_path,
        "--dry-run",
        "--printshellcmds",
        "results/small/train/model.pt",
        configfiles=[partial],
    ).stdout
    settings = json.loads(re.search(r"train --config '(\{.*?\})'", out).group(1))
    assert settings["epochs"] == 20  # the schema's default, not tiny.yaml's 3
    assert settings["image_size"] == 32  # what the config says stays
    assert settings["augment"]["rot90"] is True and settings["augment"]["rotate"] == 5
