"""Workflow config helpers used by the Snakefile: readable validation errors, experiment merging.

`config_errors` turns JSON-schema violations into one line each that names the key, e.g.
``train.epoch: unknown key (did you mean 'epochs'?)``. The workflow raises them before
`snakemake.utils.validate` runs, so a typo never reaches a job.

Imported at parse time by the Snakefile: no torch here.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def _where(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = list(schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        extra = [k for k in instance if k not in allowed]
        lines = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
            )
            prefix = f"{where}." if error.absolute_path else ""
            lines.append(f"{prefix}{key}: unknown key{hint}")
        return lines
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
    return lines


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
    (snakemake.cli.parse_config: BaseLoader), so `epochs` arrives as "5". A string that is no
    such value stays as it is, for `config_errors` to name.
    """
    schema = load_schema(schema_path)
    return _coerce(config, schema, schema)


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
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# The built-in data set's folder: the workflow draws it there (rule synth) while data.root is it.
BUILTIN_DATA = "data/surface-defects"


def uses_builtin_data(config: dict[str, Any]) -> bool:
    """Whether `data.root` is the built-in set (which the workflow draws itself)."""
    return os.path.normpath(config.get("data", {}).get("root", BUILTIN_DATA)) == BUILTIN_DATA


def experiment_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The resolved training settings of experiment `name`: `train`, then `synth.train` while
    the data is the built-in set, then the experiment's own overrides."""
    settings = config["train"]
    if uses_builtin_data(config):
        settings = deep_merge(settings, config.get("synth", {}).get("train") or {})
    return deep_merge(settings, config["experiments"][name] or {})


def load_configs(paths: list[str | Path]) -> dict[str, Any]:
    """Config files merged in order, as `snakemake --configfile A B` does."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged
