"""Code fingerprints of the workflow's stages: which cvpipe code a job runs, hashed by syntax.

A stage's code is every cvpipe module its command runs. `python -m cvpipe plots` runs
`cvpipe/__init__.py`, `cvpipe/__main__.py`, the part of `cvpipe/cli.py` that belongs to `plots`
(its `add_plots` and `run_plots` functions and what all commands share), and then `cvpipe.plots`
with everything it imports from cvpipe, transitively. The closure is read from the package's own
import statements (those inside functions too), not from a list kept by hand.

Each module is hashed by its syntax tree with docstrings removed: a comment, a docstring or a
formatting change leaves the hash alone, and any other edit changes it. The serialisation skips
empty fields, so the same source gives the same hash under Python 3.10 to 3.13 (whose `ast.dump`
differ). The workflow passes `summary()` to each rule as a param, so Snakemake's params trigger
reruns a stage and everything after it when its code changes, and `snakemake -n` names the module
(`before: '... plots:1f3a… ...' now: '... plots:9c02… ...'`). Jobs log the fingerprint of the
code they imported, and training records it in `provenance.json`.

Imported by the Snakefile at parse time: standard library (and `atomic`) only. Results are
cached per process and, given a cache file, per file state between processes: an unchanged
package costs the workflow one `stat` per module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cvpipe import atomic

PACKAGE = "cvpipe"
PACKAGE_DIR = Path(__file__).resolve().parent
_CLI = "cli"
# Functions of cli.py that belong to one subcommand: `add_<command>` (its arguments) and
# `run_<command>` (what it calls), with an optional `_<suffix>` (`run_bench_loader`).
_COMMAND_PREFIXES = ("add_", "run_")
SHORT = 12


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:]


def _dump(node: object) -> str:
    """A canonical text of a syntax tree: node types, non-empty fields, constants by repr."""
    if isinstance(node, ast.AST):
        fields = []
        for name, value in ast.iter_fields(node):
            # `kind` marks u"" strings (same value); None and [] are fields a newer Python added.
            if name in ("kind", "type_comment") or value is None or value == []:
                continue
            fields.append(f"{name}={_dump(value)}")
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return "[" + ",".join(_dump(item) for item in node) + "]"
    return repr(node)


def _belongs_to(name: str, commands: Iterable[str]) -> bool:
    return any(
        name == f"{prefix}{command}" or name.startswith(f"{prefix}{command}_")
        for prefix in _COMMAND_PREFIXES
        for command in commands
    )


def _cli_slice(tree: ast.Module, command: str) -> ast.Module:
    """cli.py without the functions of the other subcommands."""
    body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.FunctionDef)
            and node.name.startswith(_COMMAND_PREFIXES)
            and not _belongs_to(node.name, [command])
        )
    ]
    return ast.Module(body=body, type_ignores=[])


def _module_file(package_dir: Path, module: str) -> Path | None:
    """`plots` -> package_dir/plots.py (or plots/__init__.py); None if there is no such module."""
    if module == "__init__":
        return package_dir / "__init__.py"
    base = package_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, package_dir: Path, module: str) -> Iterator[str]:
    """cvpipe modules (relative names) that the import statements anywhere in `tree` load."""
    path = _module_file(package_dir, module)
    # Relative imports start from the module's package (the module itself for an __init__.py).
    parts = [] if module == "__init__" else module.split(".")
    package_parts = parts if path is not None and path.name == "__init__.py" else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                above = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join([PACKAGE, *above, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # `from cvpipe import plots` imports a module; `from cvpipe.x import f` a name.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            names = target.split(".")
            if names[0] != PACKAGE:
                continue
            # Importing a.b.c runs the __init__ of every package on the way.
            for end in range(1, len(names) + 1):
                name = ".".join(names[1:end]) or "__init__"
                if _module_file(package_dir, name) is not None:
                    yield name


def _digest(tree: ast.AST) -> str:
    return hashlib.sha256(_dump(tree).encode()).hexdigest()


@functools.cache
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    """A module's syntax tree without docstrings and without `__version__ = ...` (a release
    number is not behaviour: bumping it reruns nothing). Cached while the file is unchanged."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    _strip_docstrings(tree)
    tree.body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        )
    ]
    return tree


def _existing_file(package_dir: Path, module: str) -> Path:
    path = _module_file(package_dir, module)
    if path is None:
        raise FileNotFoundError(f"{PACKAGE}.{module}: no such module in {package_dir}")
    return path


def _tree(package_dir: Path, module: str) -> ast.Module:
    path = _existing_file(package_dir, module)
    st = path.stat()
    return _parse(path, st.st_mtime_ns, st.st_size)


@functools.cache
def _analyse(package_dir: Path, module: str, tree: ast.Module) -> tuple[str, tuple[str, ...]]:
    """(hash, cvpipe modules it imports) of a module or cli slice; cached per parsed tree."""
    return _digest(tree), tuple(dict.fromkeys(_imported(tree, package_dir, module)))


@functools.cache
def _cli_piece(package_dir: Path, command: str, cli: ast.Module) -> ast.Module:
    return _cli_slice(cli, command)


def _analysed_module(package_dir: Path, module: str) -> list:
    return list(_analyse(package_dir, module, _tree(package_dir, module)))


def _analysed_cli_piece(package_dir: Path, command: str) -> list:
    cli = _cli_piece(package_dir, command, _tree(package_dir, _CLI))
    return list(_analyse(package_dir, _CLI, cli))


class _DiskCache:
    """Results per file state (path, mtime, size, inode), kept in a JSON file between runs, so
    that a parse of the workflow stats the modules instead of parsing them. Entries are only
    valid for the stagecode.py that wrote them (its own hash is the cache's version)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self.version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        self.entries: dict[str, list] = {}
        self.used: set[str] = set()
        self.changed = False
        if self.path:
            try:
                saved = json.loads(self.path.read_text())
                if saved.get("version") == self.version:
                    self.entries = saved["entries"]
            except (OSError, ValueError, KeyError, AttributeError):
                pass

    def get(self, key: str, compute: Callable[[], list]) -> list:
        self.used.add(key)
        if key not in self.entries:
            self.entries[key] = compute()
            self.changed = True
        return self.entries[key]

    def save(self) -> None:
        """Write the entries this process used (stale file states drop out)."""
        if self.path and self.changed:
            kept = {key: self.entries[key] for key in self.used}
            atomic.write_text(self.path, json.dumps({"version": self.version, "entries": kept}))
            self.changed = False


def _key(package_dir: Path, module: str, part: str = "") -> str:
    path = _existing_file(package_dir, module)
    st = path.stat()
    return f"{path}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}|{part}"


def _stage_hashes(
    commands: tuple[str, ...], package_dir: Path, cache: _DiskCache
) -> dict[str, str]:
    hashes: dict[str, str] = {}
    todo: list[str] = ["__init__", "__main__"]
    for command in commands:
        digest, imports = cache.get(
            _key(package_dir, _CLI, command),
            functools.partial(_analysed_cli_piece, package_dir, command),
        )
        hashes[f"{_CLI}[{command}]"] = digest
        todo.extend(imports)
    while todo:
        module = todo.pop()
        if module in hashes or module == _CLI:
            continue
        hashes[module], imports = cache.get(
            _key(package_dir, module), functools.partial(_analysed_module, package_dir, module)
        )
        todo.extend(imports)
    return hashes


_CACHES: dict[str, _DiskCache] = {}


def stage_hashes(
    commands: Iterable[str],
    package_dir: str | os.PathLike[str] = PACKAGE_DIR,
    cache_file: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """`{module: sha256}` of the code that `python -m cvpipe <command>` runs, for each command.

    Modules are named relative to the package (`plots`, `__init__`); the slice of cli.py for a
    command is `cli[<command>]`. Raises FileNotFoundError if a command has no `run_<command>`.
    `cache_file` (JSON) keeps the results per file state between processes, as the workflow
    does, so an unchanged package costs one `stat` per module.
    """
    package_dir = Path(package_dir).resolve()
    commands = tuple(commands)
    cache = _CACHES.setdefault(str(cache_file), _DiskCache(cache_file))
    functions = cache.get(
        _key(package_dir, _CLI, "functions"),
        lambda: [n.name for n in _tree(package_dir, _CLI).body if isinstance(n, ast.FunctionDef)],
    )
    for command in commands:
        if not any(_belongs_to(name, [command]) for name in functions):
            raise FileNotFoundError(f"{PACKAGE}.cli has no run_{command}: no such command")
    hashes = _stage_hashes(commands, package_dir, cache)
    cache.save()
    return hashes


def summary(hashes: dict[str, str]) -> str:
    """One line, `module:hash` (12 hex digits) per module: the rules' `code` param."""
    return " ".join(f"{module}:{digest[:SHORT]}" for module, digest in sorted(hashes.items()))


def fingerprint(hashes: dict[str, str]) -> str:
    """One sha256 over all modules' hashes: a stage's code in one value."""
    text = "\n".join(f"{module}={digest}" for module, digest in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def short(hashes: dict[str, str]) -> str:
    """`fingerprint()` cut to 12 hex digits, as logs and the report show it."""
    return fingerprint(hashes)[:SHORT]


def module_files(
    hashes: dict[str, str], package_dir: str | os.PathLike[str] = PACKAGE_DIR
) -> list[Path]:
    """The source files behind `stage_hashes()`'s modules."""
    names = {module.split("[")[0] for module in hashes}
    return sorted(p for p in (_module_file(Path(package_dir), n) for n in names) if p)
