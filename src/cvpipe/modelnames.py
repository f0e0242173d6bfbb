"""Torchvision's classification model names, and the check of every experiment's model.

The workflow checks the models when its config loads, so a misspelt name stops `snakemake -n`
instead of a training job. Importing torchvision takes seconds, so the check does it only for a
name outside the tested models, and skips it where Snakemake runs without torchvision (the jobs
run in a container or conda env with it): `build_model` checks the name again in the job.
"""

from __future__ import annotations

import difflib
from typing import Any

from cvpipe.config import experiments, run_settings, uses_builtin_data

# The models the test suite builds; any other torchvision classification model name also works.
TESTED_MODELS = (
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_b3",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "convnext_tiny",
)


def classification_models() -> list[str]:
    """Names of torchvision's image classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _shared_key(config: dict[str, Any]) -> str:
    """The key that sets the model of a run that does not set its own."""
    synth = (config.get("synth") or {}).get("train") or {}
    return "synth.train.model" if uses_builtin_data(config) and "model" in synth else "train.model"


def _model_keys(config: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(the key that sets a model, the model) -> the runs it reaches, for every untested model.
    The key is where the user wrote the name: a named experiment's own `model`, a sweep's
    `sweep.grid.model[i]` or `sweep.base.model`, else `train.model`; never a sweep run's name."""
    named = config.get("experiments") or {}
    sweep = config.get("sweep") or {}
    grid_models = list((sweep.get("grid") or {}).get("model") or [])
    keys: dict[tuple[str, str], list[str]] = {}
    for name, overrides in experiments(config).items():
        model = run_settings(config, overrides)["model"]
        if model in TESTED_MODELS:
            continue
        if name in named:
            own = "model" in (named[name] or {})
            key = f"experiments.{name}.model" if own else _shared_key(config)
        elif model in grid_models:
            key = f"sweep.grid.model[{grid_models.index(model)}]"
        elif "model" in (sweep.get("base") or {}):
            key = "sweep.base.model"
        else:
            key = _shared_key(config)
        keys.setdefault((key, model), []).append(name)
    return keys


def _runs(key: str, names: list[str], shown: int = 3) -> str:
    """`experiment 'a'`, `experiments 'a', 'b'`, or the first few and how many more; for a sweep
    key, how many of its runs."""
    if key.startswith("sweep."):
        return f"{len(names)} run{'s' if len(names) > 1 else ''} of the sweep"
    listed = ", ".join(map(repr, names[:shown]))
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ("experiment " if len(names) == 1 else "experiments ") + listed + more


def model_errors(config: dict[str, Any]) -> list[str]:
    """One line per config key and model name torchvision does not know (empty if all do), on
    the config with its defaults filled and its sweep (the runs come from `experiments`)."""
    keys = _model_keys(config)
    if not keys:
        return []
    try:
        known = classification_models()
    except ImportError:
        return []
    lines = []
    for (key, model), names in keys.items():
        if model in known:
            continue
        close = difflib.get_close_matches(model, known, n=3)
        tested = f"tested: {', '.join(TESTED_MODELS)}"
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else tested
        lines.append(
            f"{key}: {model!r} ({_runs(key, names)}) is not a torchvision classification model "
            f"({hint}): use a name from torchvision.models.list_models()."
        )
    return lines
