"""Workflow config helpers used by the Snakefile: readable validation errors, experiment merging,
and the expansion of a `sweep:` into runs.

`config_errors` turns JSON-schema violations into one line each that names the key, e.g.
``train.epoch: unknown key (did you mean 'epochs'?)``. The workflow raises them before
`snakemake.utils.validate` runs, so a typo never reaches a job.

`experiments` lists every run: the named experiments and the runs of the sweep (`expand_sweep`:
the grid's combinations times the seeds, each named from its own values by `run_name`).

Imported at parse time by the Snakefile: no torch here.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cvpipe.errors import CvpipeError
from cvpipe.settings import SweepExtra


def _where(path: Iterable[Any]) -> str:
    """`sweep.extras[0]`: keys dotted, list positions in brackets."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return where.removeprefix(".") or "(top level)"


def _hint(key: str, allowed: list[str]) -> str:
    """` (did you mean 'epochs'?)` for a misspelt key, else the keys allowed there."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = list(schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        extra = [k for k in instance if k not in allowed]
        prefix = f"{where}." if error.absolute_path else ""
        return [f"{prefix}{key}: unknown key{_hint(key, allowed)}" for key in extra]
    if error.validator == "not":  # propertyNames: reserved experiment names
        return [f"{where}: the name {error.instance!r} is reserved for the workflow's own outputs"]
    return [f"{where}: {error.message}"]


def config_errors(config: dict[str, Any], schema_path: str | Path) -> list[str]:
    """Every schema violation in `config`, one readable line each (empty if valid)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines: list[str] = []
    for error in sorted(
        validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))
    ):
        # allOf/$ref wrap the real cause; report the innermost errors.
        causes = error.context or [error]
        for cause in causes:
            for line in _describe(cause):
                if line not in lines:
                    lines.append(line)
    return lines + sweep_errors(config, schema)


def _schemas_at(node: Any, root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`node` and every schema it pulls in through `$ref` and `allOf` (local refs only)."""
    if not isinstance(node, Mapping):
        return []
    found = [node]
    ref = node.get("$ref", "")
    if ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        found += _schemas_at(target, root)
    for part in node.get("allOf", []):
        found += _schemas_at(part, root)
    return found


def _parse_scalar(text: str, types: set[str]) -> Any:
    """`text` as the boolean or number the schema wants, or `text` itself if it is not one."""
    word = text.strip()
    if "boolean" in types and word.lower() in ("true", "false"):
        return word.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", word) and types & {"integer", "number"}:
        return int(word)
    if "number" in types:
        try:
            number = float(word)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    return text


def _coerce(value: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    schemas = _schemas_at(node, root)
    if isinstance(value, str):
        types: set[str] = set()
        for sub in schemas:
            kind = sub.get("type", [])
            types.update([kind] if isinstance(kind, str) else kind)
        return value if "string" in types else _parse_scalar(value, types)
    if isinstance(value, list):  # sweep.seeds: [0, 1] arrives as ["0", "1"]
        items = [s["items"] for s in schemas if isinstance(s.get("items"), Mapping)]
        return [_coerce(item, {"allOf": items}, root) for item in value] if items else value
    if not isinstance(value, dict):
        return value
    coerced = {}
    for key, item in value.items():
        subs = [s["properties"][key] for s in schemas if key in s.get("properties", {})]
        if not subs:  # a name of the user's choosing (an experiment)
            subs = [s["additionalProperties"] for s in schemas if "additionalProperties" in s]
        subs = [s for s in subs if isinstance(s, Mapping)]
        coerced[key] = _coerce(item, {"allOf": subs}, root) if subs else item
    return coerced


def coerce_strings(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """A copy of `config` with each string where the schema wants a number or a boolean parsed.

    `snakemake --config 'train={"epochs": 5}'` reads nested values as YAML's base strings
    (snakemake.cli.parse_config: BaseLoader), so `epochs` arrives as "5", and so do list items
    (`sweep={grid: {lr: [0.1, 0.01]}, seeds: [0, 1]}`: a grid key's values as the train key it
    names). A string that is no such value stays as it is, for `config_errors` to name.
    """
    schema = load_schema(schema_path)
    coerced = _coerce(config, schema, schema)
    sweep = coerced.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("grid"), dict):
        # A grid key's values take the schema of the train key it names (sweep_errors).
        keys = _train_keys(schema)
        sweep["grid"] = {
            key: _coerce(values, {"items": keys[key]}, schema) if key in keys else values
            for key, values in sweep["grid"].items()
        }
    return coerced


def load_schema(schema_path: str | Path) -> dict[str, Any]:
    """The workflow's config schema."""
    return yaml.safe_load(Path(schema_path).read_text())


def with_defaults(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """A copy of `config` with every key it leaves out set to the schema's `default`.

    The same filling as `snakemake.utils.validate(config, schema, set_default=True)`, which the
    workflow runs (its `properties` validator extended as in the jsonschema FAQ,
    https://python-jsonschema.readthedocs.io/en/latest/faq/), for `cvpipe config` outside
    Snakemake. Only `default:`s on the path of a key count: experiments get none (see the schema).
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    filled = copy.deepcopy(config)
    filler = jsonschema.validators.extend(base, {"properties": fill})(schema)
    for _ in filler.iter_errors(filled):  # errors are config_errors' to report
        pass
    return filled


def split_errors(config: dict[str, Any]) -> list[str]:
    """`data.split`'s shares must add up to 1 (as the index checks, cvpipe.index); run on the
    config with its defaults filled, since a share left out takes its default."""
    split = config["data"]["split"]
    total = sum(split.values())
    if math.isclose(total, 1.0, abs_tol=1e-6):
        return []
    terms = " + ".join(f"{name} {share:g}" for name, share in split.items())
    return [
        f"data.split: {terms} = {total:.4g}, but every image goes to exactly one split: change "
        "the shares so that they add up to 1."
    ]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` applied; nested dicts merge key by key."""
    merged = _copy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    """A deep copy of config data (YAML's dicts, lists and scalars) without copy.deepcopy's
    bookkeeping: the Snakefile merges every run's settings at parse time (1,000 for a sweep)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    return copy.deepcopy(value)


# The built-in data set's folder: the workflow draws it there (rule synth) while data.root is it.
BUILTIN_DATA = "data/surface-defects"


def uses_builtin_data(config: dict[str, Any]) -> bool:
    """Whether `data.root` is the built-in set (which the workflow draws itself)."""
    return os.path.normpath(config.get("data", {}).get("root", BUILTIN_DATA)) == BUILTIN_DATA


def load_configs(paths: list[str | Path]) -> dict[str, Any]:
    """Config files merged in order, as `snakemake --configfile A B` does."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def run_settings(config: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Training settings of one run: `train`, then `synth.train` while the data is the built-in
    set, then the run's own overrides (a named experiment's, or a sweep run's)."""
    settings = config["train"]
    if uses_builtin_data(config):
        settings = deep_merge(settings, config.get("synth", {}).get("train") or {})
    return deep_merge(settings, dict(overrides or {}))


def experiment_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The resolved training settings of experiment `name`, named or a run of the sweep."""
    named = config.get("experiments") or {}
    if name in named:
        return run_settings(config, named[name])
    runs = expand_sweep(config)
    if name not in runs:
        known = ", ".join([*named, *runs])
        raise CvpipeError(f"no experiment {name!r} in the config (experiments: {known})")
    return run_settings(config, runs[name])


def experiments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every run the config asks for, name -> its train overrides: the named experiments, then
    the sweep's runs. Raises CvpipeError for a sweep run named like an experiment, or no runs."""
    named = config.get("experiments") or {}
    runs = expand_sweep(config)
    clashes = [name for name in runs if name in named]
    if clashes:
        raise CvpipeError(
            "; ".join(f"experiments.{name} is also the name of a sweep run" for name in clashes)
            + ": rename the experiment (results/<name>/ cannot hold both)."
        )
    if not named and not runs:
        raise CvpipeError(
            "experiments: no runs: name at least one experiment under `experiments:`, or add a "
            "`sweep:` (config/sweep-example.yaml)."
        )
    return {**{name: dict(over or {}) for name, over in named.items()}, **runs}


# Sweeps: `sweep: {base, grid, seeds, name_keys}` expands into runs that work like experiments.

# Short names of train keys in run names; any other key goes by its last part (augment.preset:
# preset). `sweep.name_keys` chooses others.
NAME_ALIASES = {
    "lr": "lr",
    "batch_size": "bs",
    "image_size": "px",
    "weight_decay": "wd",
    "epochs": "ep",
}
# The longest run name (a folder under results/ and a column in tables): a longer one keeps
# its start, then a hash of the whole, then the seed.
NAME_CAP = 80
_HASH_CHARS = 8


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def format_value(value: Any) -> str:
    """`value` as a run name shows it: numbers short but exact (0.001, 1e-05, 32, not
    0.0010000), booleans and null in lower case, lists joined by `_`. A string with characters
    outside [A-Za-z0-9._] has them replaced by `_` and gets a short hash of the original, so
    that two values never read alike (`a/b` and `a_b`)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        short = f"{value:g}"
        return (short if float(short) == value else repr(value)).replace("e+", "e")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "_".join(format_value(item) for item in value)
    text = str(value)
    clean = re.sub(r"[^A-Za-z0-9._]", "_", text)
    return clean if clean == text and text else f"{clean}_{_digest(text, 6)}"


def run_name(model: Any, values: Sequence[tuple[str, Any]], seed: int) -> str:
    """A sweep run's name, `<model>-<alias><value>-...-s<seed>` (resnet18-lr0.001-px32-s0),
    from its own values only: (alias, value) of each grid key but `model`, in the grid's order.
    Over NAME_CAP characters, the start is kept and a hash of the whole name replaces the rest,
    before the seed (so the seeds of one setting share the hash)."""
    head = "-".join([format_value(model), *(f"{alias}{format_value(v)}" for alias, v in values)])
    tail = f"-s{seed}"
    if len(head) + len(tail) > NAME_CAP:
        keep = NAME_CAP - len(tail) - _HASH_CHARS - 1
        head = f"{head[:keep].rstrip('-._')}-{_digest(head, _HASH_CHARS)}"
    return head + tail


def _nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"augment.preset": "surface"} as {"augment": {"preset": "surface"}}."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def expand_sweep(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The sweep's runs, name -> train overrides (`sweep.base`, then the run's grid values,
    then its seed), on a config with its defaults filled; empty without a sweep. Every
    combination of the grid's lists, in the grid's order (the last key varies fastest), each
    once per seed. A name depends on the run's own values only: a value added to a list adds
    runs and never renames or changes one (so nothing reruns)."""
    sweep = config.get("sweep") or {}
    if not sweep:
        return {}
    base, grid = sweep.get("base") or {}, sweep.get("grid") or {}
    aliases = {**NAME_ALIASES, **(sweep.get("name_keys") or {})}
    default_model = run_settings(config, base)["model"]
    runs: dict[str, dict[str, Any]] = {}
    chosen_by_name: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*grid.values()):
        chosen = dict(zip(grid, combination, strict=True))
        named = [
            (aliases.get(key, key.rsplit(".", 1)[-1]), value)
            for key, value in chosen.items()
            if key != "model"  # the name's first part
        ]
        overrides = deep_merge(base, _nested(chosen))
        for seed in sweep["seeds"]:
            name = run_name(chosen.get("model", default_model), named, seed)
            if name in runs:
                raise CvpipeError(_same_name(name, chosen_by_name[name], chosen))
            runs[name] = {**overrides, "seed": seed}
            chosen_by_name[name] = chosen
    return runs


def runs_making(config: Mapping[str, Any], runs: Iterable[str], extra: SweepExtra) -> list[str]:
    """The runs of `runs` whose `extra` (a per-run output: gradcam, model_card) the workflow
    makes by default: every named experiment's, and the sweep's where `sweep.extras` lists it.
    A 1,000-run sweep then plans 3 jobs a run instead of 5, and its report holds no 2,000 heat
    maps and cards that nobody asked for; `snakemake results/<run>/MODEL_CARD.md` makes any."""
    named = config.get("experiments") or {}
    extras = (config.get("sweep") or {}).get("extras") or []
    return [run for run in runs if run in named or extra in extras]


def run_names_pattern(config: dict[str, Any]) -> str:
    """A regular expression that matches exactly the names of `experiments(config)`.

    The workflow's `experiment` wildcard constraint. Snakemake copies a constraint into every
    file pattern with that wildcard and rescans it whenever it fills one in, so a plain
    alternation of 1,000 sweep runs made `snakemake -n` several times slower (BENCHMARKS.md,
    "Sweeps at scale"). The named experiments are listed one by one; the sweep's runs are the
    product of their parts (model, each grid key's alias and values, seed), which grows with the
    number of values, not of runs, and is used when it matches no other name (else the runs are
    listed too: names shortened with a hash, NAME_CAP)."""
    named = [re.escape(name) for name in config.get("experiments") or {}]
    runs = expand_sweep(config)
    product, size = _sweep_product(config)
    exact = size == len(runs) and all(re.fullmatch(product, name) for name in runs)
    swept = [product] if runs and exact else [re.escape(name) for name in runs]
    return "|".join(named + swept)


def _sweep_product(config: dict[str, Any]) -> tuple[str, int]:
    """(pattern, most names it can match) of the sweep's run names as `run_name` spells them
    when no name is shortened: model, `-<alias><value>` per other grid key, `-s<seed>`."""
    sweep = config.get("sweep") or {}
    grid = sweep.get("grid") or {}
    aliases = {**NAME_ALIASES, **(sweep.get("name_keys") or {})}
    model = run_settings(config, sweep.get("base") or {})["model"]
    parts = [[format_value(value) for value in grid.get("model", [model])]]
    parts += [
        [f"-{aliases.get(key, key.rsplit('.', 1)[-1])}{format_value(value)}" for value in values]
        for key, values in grid.items()
        if key != "model"
    ]
    parts.append([f"-s{seed}" for seed in sweep.get("seeds") or []])
    texts = [list(dict.fromkeys(part)) for part in parts]
    pattern = "".join("(?:" + "|".join(map(re.escape, part)) + ")" for part in texts)
    return pattern, math.prod(len(part) for part in texts)


def _same_name(name: str, first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    def text(chosen: Mapping[str, Any]) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in chosen.items())

    return (
        f"sweep.grid: the runs with {text(first)} and with {text(second)} get the same name "
        f"{name!r}: give their keys names that tell them apart in sweep.name_keys."
    )


def _train_keys(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every train key, nested ones dotted (augment.preset) -> its schema."""
    keys: dict[str, Mapping[str, Any]] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            objects = [s for s in _schemas_at(sub, schema) if "properties" in s]
            if objects:
                walk(objects[0], f"{prefix}{name}.")
            else:
                keys[f"{prefix}{name}"] = sub

    walk(schema["$defs"]["train"], "")
    return keys


def sweep_errors(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about `sweep`, one line each: each grid key must be a train
    key (named with a did-you-mean, as config_errors does) and each of its values one that key
    accepts; the seeds come from `seeds` alone; `name_keys` names grid keys."""
    sweep = config.get("sweep")
    if not isinstance(sweep, Mapping):
        return []
    grid: Mapping[str, Any] = sweep["grid"] if isinstance(sweep.get("grid"), Mapping) else {}
    keys = _train_keys(schema)
    values_of = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/train"})
    lines = []
    for key, values in grid.items():
        where = f"sweep.grid.{key}"
        if key == "seed":
            lines.append(f"{where}: the seeds of a sweep are sweep.seeds: list them there")
        elif any(k.startswith(f"{key}.") for k in keys):
            lines.append(f"{where}: sweep one of its keys, dotted: {key}.<key>: [values]")
        elif key not in keys:
            lines.append(f"{where}: unknown key{_hint(key, list(keys))}")
        elif isinstance(values, list):
            lines += [
                f"{where}[{i}]: {error.message}"
                for i, value in enumerate(values)
                for error in values_of.iter_errors(_nested({key: value}))
            ]
    base, name_keys = sweep.get("base"), sweep.get("name_keys")
    if isinstance(base, Mapping) and "seed" in base:
        lines.append("sweep.base.seed: the seeds of a sweep are sweep.seeds: list them there")
    for key in name_keys if isinstance(name_keys, Mapping) else {}:
        if key not in grid:
            lines.append(f"sweep.name_keys.{key}: not a key of sweep.grid{_hint(key, list(grid))}")
    return lines
