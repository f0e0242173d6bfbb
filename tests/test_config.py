"""Config: the schema, the documented config file and the code agree; typos are named.

The schema is the one home of every default and allowed value: these tests fail when
config/config.yaml, the Literal types, TrainConfig, AugmentPolicy or a CLI option drift from it.
"""

import dataclasses
import json
import re
import typing

import yaml
from helpers import CONFIGS, REPO, planned_jobs, snakemake

from cvpipe import settings
from cvpipe.cli import build_parser
from cvpipe.config import config_errors, experiment_config, with_defaults
from cvpipe.launch import evaluate_launcher
from cvpipe.settings import AugmentPolicy, TrainConfig

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
    policy_keys = {f.name for f in dataclasses.fields(AugmentPolicy)}
    assert set(schema["$defs"]["augment"]["properties"]) == policy_keys | {"preset"}
    for name in typing.get_args(settings.Preset):
        assert set(settings.PRESETS[name]) == policy_keys, name
    assert set(load_config()["train"]) == train_keys  # config.yaml documents every key


def test_experiment_overrides_merge_nested_keys():
    config = load_config()
    config["experiments"]["x"] = {"lr": 0.1, "augment": {"rotate": 30}}
    merged = experiment_config(config, "x")
    assert merged["lr"] == 0.1
    assert merged["augment"]["rotate"] == 30
    assert merged["augment"]["hflip"] is None  # untouched keys keep the default (the preset's)
    assert config["train"]["augment"]["rotate"] is None  # the defaults are not modified


def resolved_preset(config: dict, name: str) -> str:
    """The augmentation preset experiment `name` trains with, as the workflow resolves it."""
    return TrainConfig.from_dict(experiment_config(config, name)).augment["preset"]


def test_own_data_gets_the_natural_preset_the_built_in_set_surface(tmp_path):
    """synth.train (surface) applies only while data.root is the built-in set; an
    experiment's own preset wins over both."""
    config = load_config()
    config["experiments"] = {"plain": {}, "own": {"augment": {"preset": "natural"}}}
    assert resolved_preset(config, "plain") == "surface"
    assert resolved_preset(config, "own") == "natural"
    assert TrainConfig.from_dict(experiment_config(config, "plain")).policy().rot90 is True
    config["data"]["root"] = str(tmp_path)
    assert resolved_preset(config, "plain") == "natural"
    config["experiments"]["own"] = {"augment": {"preset": "surface"}}
    assert resolved_preset(config, "own") == "surface"
    policy = TrainConfig.from_dict(experiment_config(config, "plain")).policy()
    assert policy.random_resized_crop and not policy.vflip and not policy.rot90


def test_cache_size_auto_follows_the_crop(tmp_path):
    """auto: a larger cache (image_size / 0.875) for random resized crops, image_size for the
    surface preset and for letterboxed images; an explicit size wins."""
    from cvpipe.settings import cache_side

    natural = {"image_size": 224, "augment": {"preset": "natural"}}
    assert cache_side(natural, "crop") == 256
    assert cache_side(natural, "letterbox") == 224
    assert cache_side({"image_size": 224, "augment": {"preset": "surface"}}, "crop") == 224
    assert cache_side({**natural, "cache_size": 240}, "crop") == 240
    no_crop = {"image_size": 64, "augment": {"random_resized_crop": False}}
    assert cache_side(no_crop, "crop") == 64
    assert cache_side({"image_size": 64}, "crop") == 73  # the schema's preset: natural


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
    del config["train"]["epochs"], config["train"]["augment"]["preset"], config["plots"]
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
    # own data: the schema's preset, not synth.train's (which is for the built-in set only)
    assert settings["augment"]["preset"] == "natural" and settings["augment"]["rotate"] == 5
    assert "results/dataset/cache/37px/stats.json" in out  # 32 / 0.875: random resized crops


# Keys of config/config.yaml without a schema default, and why.
NO_DEFAULT = {
    "container": "the Snakefile's `container:` directive reads it before the config is validated",
    "experiments": "the runs a config asks for: there is no default set of runs",
}


def same(a, b) -> bool:
    """Equal values of the same type (True == 1 and 1 == 1.0 in Python, not in YAML)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def default_drift(config: dict, node: dict, path: str = "") -> list[str]:
    """Keys of `config` whose schema `default` (under `node`) is missing or another value."""
    problems = []
    for key, value in config.items():
        name = f"{path}{key}"
        sub = node.get("properties", {}).get(key)
        if name in NO_DEFAULT:
            continue
        if sub is None:
            problems.append(f"{name}: not in the schema")
        elif isinstance(value, dict) and "properties" in sub:
            problems += default_drift(value, sub, f"{name}.")
        elif "default" not in sub:
            problems.append(f"{name}: no default in the schema")
        elif not same(sub["default"], value):
            problems.append(f"{name}: schema default {sub['default']!r}, config {value!r}")
    return problems


def test_every_config_value_is_the_schema_default():
    config, schema = load_config(), yaml.safe_load(SCHEMA.read_text())
    assert default_drift(config, schema) == []
    # ... and the schema has no default that config/config.yaml does not state.
    stated = {key: config[key] for key in NO_DEFAULT}
    assert same(with_defaults(stated, SCHEMA), config)


def test_a_changed_default_is_reported(tmp_path):
    text = SCHEMA.read_text()
    assert text.count("epochs: {default: 20}") == 1
    changed = yaml.safe_load(text.replace("epochs: {default: 20}", "epochs: {default: 10}"))
    assert default_drift(load_config(), changed) == ["train.epochs: schema default 10, config 20"]
    changed = yaml.safe_load(text.replace("channels_last: {default: true}", "channels_last: {}"))
    assert default_drift(load_config(), changed) == [
        "train.channels_last: no default in the schema"
    ]


def test_the_code_defaults_are_the_schema_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    train = load_config()["train"]
    assert same(settings.defaults(schema["properties"]["train"]), train)
    assert same(TrainConfig().as_dict(), train)
    assert same(TrainConfig.from_dict({}).as_dict(), train)
    # AugmentPolicy's field defaults are the surface preset; the schema's preset resolves
    surface = AugmentPolicy.resolve({"preset": "surface"})
    assert AugmentPolicy() == surface
    assert dataclasses.asdict(AugmentPolicy.resolve({})) == {
        **settings.PRESETS[train["augment"]["preset"]],
        "crop_scale": (0.25, 1.0),
        "crop_ratio": (0.75, 4 / 3),
    }
    stated = {k: v for k, v in load_config().items() if k not in NO_DEFAULT}
    assert same(settings.CONFIG_DEFAULTS, stated)


def test_cvpipe_fills_defaults_as_snakemake_does():
    """`cvpipe config` (config.with_defaults) and the workflow (snakemake's validate) agree."""
    from snakemake.utils import validate

    partial = {
        "container": "x.sif",
        "train": {"epochs": 3, "augment": {"rotate": 5}},
        "experiments": {"a": {}, "b": {"augment": {"scale": 0.1}}},
    }
    filled = json.loads(json.dumps(partial))
    validate(filled, str(SCHEMA))
    assert same(with_defaults(partial, SCHEMA), filled)
    assert filled["experiments"] == partial["experiments"]  # overrides stay as written
    assert filled["train"]["epochs"] == 3 and filled["train"]["lr"] == 0.002


# Every `enum` of the schema (by its path) and the Literal type that states it in the code.
LITERALS = {
    "$defs.train.properties.amp": settings.Amp,
    "$defs.train.properties.resume": settings.Resume,
    "$defs.train.properties.monitor": settings.Monitor,
    "$defs.train.properties.normalize": settings.Normalize,
    "$defs.train.properties.device": settings.Device,
    "$defs.augment.properties.preset": settings.Preset,
    "properties.data.properties.on_bad_image": settings.OnBadImage,
    "properties.data.properties.on_conflicting_labels": settings.OnConflictingLabels,
    "properties.synth.properties.format": settings.ImageFormat,
    "properties.preprocess.properties.resize": settings.Resize,
    "properties.predict.properties.on_bad_file": settings.OnBadImage,
    "$defs.sweep.properties.extras.items": settings.SweepExtra,
}


def enums(node, path=""):
    """Schema path -> enum, for every `enum` that lists allowed values (not reserved names)."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "enum":
                found[path.rstrip(".")] = value
            elif key != "not":
                found.update(enums(value, f"{path}{key}."))
    return found


def test_every_allowed_value_list_is_one_literal():
    schema = yaml.safe_load(SCHEMA.read_text())
    found = enums(schema)
    assert set(found) == set(LITERALS)
    for path, literal in LITERALS.items():
        assert list(typing.get_args(literal)) == found[path], path
    train_enums = {
        key: tuple(sub["enum"])
        for key, sub in schema["$defs"]["train"]["properties"].items()
        if "enum" in sub
    }
    assert settings.literal_fields(TrainConfig) == train_enums


def rule_options() -> dict[str, set[str]]:
    """Subcommand -> the options its rule passes (each rule is named after its subcommand)."""
    options: dict[str, set[str]] = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=\s*(?:rule|checkpoint) \w+:)", path.read_text()):
            rule = re.match(r"\s*(?:rule|checkpoint) (\w+):", block)
            if rule:
                options[rule[1]] = set(re.findall(r"(--[a-z][a-z-]*)", block))
    # Words the rules take from common.smk's helpers: cvpipe.launch and report_stage_code.
    options["evaluate"] |= set(re.findall(r"--[a-z-]+", evaluate_launcher(0)))
    options["gpus"] = set(re.findall(r"--[a-z-]+", evaluate_launcher(1).split(" -- ")[0]))
    options["compare"].add("--stage-code")
    return options


def test_every_option_a_rule_passes_is_required():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    options = rule_options()
    assert set(options) == {
        "synth", "index", "preprocess", "train", "evaluate", "plots", "compare", "gpus",
        "export", "predict", "gradcam", "model_card", "mlflow_export",
    }  # fmt: skip
    for command, passed in options.items():
        parser = sub.choices[command.replace("_", "-")]  # rule model_card: `cvpipe model-card`
        actions = {o: a for a in parser._actions for o in a.option_strings}
        assert passed <= set(actions), (command, passed - set(actions))
        if command == "predict":  # also typed by hand: its defaults are for people; the rule
            continue  # passes every option that a config key sets
        assert [o for o in sorted(passed) if not actions[o].required] == [], command


def test_merged_settings_share_no_list_or_dict_with_the_configs_they_come_from():
    """Every run's settings are merged from the same config: a shared list would let one run's
    settings change another's."""
    from cvpipe.config import deep_merge

    base = {"train": {"lr": 0.1, "augment": {"ops": ["flip", "crop"]}}}
    override = {"train": {"lr": 0.2, "extra": {"sizes": [32]}}}
    merged = deep_merge(base, override)
    assert merged == {
        "train": {"lr": 0.2, "augment": {"ops": ["flip", "crop"]}, "extra": {"sizes": [32]}}
    }
    merged["train"]["augment"]["ops"].append("rotate")
    merged["train"]["extra"]["sizes"].append(48)
    assert base == {"train": {"lr": 0.1, "augment": {"ops": ["flip", "crop"]}}}
    assert override == {"train": {"lr": 0.2, "extra": {"sizes": [32]}}}
