"""config/README.md from the config schema: every key with its type, default, allowed values
and description, so the documentation cannot drift from what the workflow accepts.

    python -m cvpipe.configdoc            # rewrite config/README.md (make config-readme)
    python -m cvpipe.configdoc --check    # exit 1 if it is out of date

tests/test_configdoc.py asserts that the committed README is the generated text and that every
schema property has a description. Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
README = REPO / "config" / "README.md"

HEADER = """\
# Configuration

The workflow reads `config/config.yaml` of the directory it runs in (plus any `--configfile` /
`--config` laid over it) and checks it against `workflow/schemas/config.schema.yaml` when it
loads: an unknown or misspelt key stops it with the key's name. `config/config.yaml` has the
same text as comments beside each key.

This file is generated from the schema's `description`, `default` and allowed values:
after changing the schema, run `make config-readme` (`python -m cvpipe.configdoc`);
`tests/test_configdoc.py` fails while it is out of date.

| key | type | default | allowed | description |
|---|---|---|---|---|
"""


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """`node` with its `$ref` (also one inside `allOf`) merged in, nested keys merged key by
    key (the top-level `train` adds only defaults to `$defs/train`); its own keys win."""
    merged: dict[str, Any] = {}
    refs = [node] + [part for part in node.get("allOf", []) if "$ref" in part]
    for part in refs:
        if "$ref" in part:
            target: Any = root
            for name in part["$ref"].removeprefix("#/").split("/"):
                target = target[name]
            merged = _merge(merged, _resolve(target, root))
    return _merge(merged, {k: v for k, v in node.items() if k not in ("$ref", "allOf")})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _literal(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _allowed(node: dict[str, Any]) -> str:
    if "enum" in node:
        return ", ".join(_literal(v) for v in node["enum"])
    bounds = (
        ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
    )  # fmt: skip
    words = [f"{sign} {node[key]}" for key, sign in bounds if key in node]
    if node.get("minLength"):
        words.append("not empty")
    if "pattern" in node:
        words.append(f"matches `{node['pattern']}`")
    return ", ".join(words)


def _type(node: dict[str, Any]) -> str:
    if "type" in node:  # a list of types: `["null", "string"]` reads "null or string"
        kinds = node["type"]
        return " or ".join(kinds) if isinstance(kinds, list) else kinds
    if "enum" in node:
        return "string" if all(isinstance(v, str) for v in node["enum"]) else "enum"
    return ""


def rows(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> list[list[str]]:
    """One row per property, depth first; nested objects after their own row."""
    out: list[list[str]] = []
    for name, own in node.get("properties", {}).items():
        key, child = f"{prefix}{name}", _resolve(own, root)
        default = _literal(child["default"]) if "default" in child else ""
        # `<`: GitHub's Markdown would take `<name>` in a description for an HTML tag.
        description = child.get("description", "").replace("<", "&lt;")
        out.append([f"`{key}`", _type(child), default, _allowed(child), description])
        if "$ref" in own and "properties" not in own:  # another key's settings, reused
            target = own["$ref"].rsplit("/", 1)[1]
            out.append([f"`{key}.*`", "", "", "", f"Any `{target}.*` key above."])
            continue
        out += rows(child, root, f"{key}.")
        extra = child.get("additionalProperties")
        if isinstance(extra, dict) and "$ref" in extra:
            target = extra["$ref"].rsplit("/", 1)[1]
            out.append(
                [f"`{key}.<name>`", "object", "", "", f"Any `{target}.*` key above, for this one."]
            )
    return out


def render(schema_path: str | Path = SCHEMA) -> str:
    """The README text for the schema at `schema_path`."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
        for row in rows(schema, schema)
    ]
    return HEADER + "\n".join(lines) + "\n"


def undescribed(schema_path: str | Path = SCHEMA) -> list[str]:
    """Keys of the schema without a description (empty when every key has one)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    return [row[0] for row in rows(schema, schema) if not row[4]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if README.read_text() != text:
            print(f"{README} is out of date: run `make config-readme`", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
