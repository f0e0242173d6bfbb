"""Torchvision's classification model names, and the check of every experiment's model.

The workflow checks the models when its config loads, so a misspelt name stops `snakemake -n`
instead of a training job. Importing torchvision takes seconds, so the check does it only for a
name outside the tested models, and skips it where Snakemake runs without torchvision (the jobs
run in a container or conda env with it): `build_model` checks the name again in the job.
"""

from __future__ import annotations

import difflib
from typing import Any

from cvpipe.config import experiment_config

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


def model_errors(config: dict[str, Any]) -> list[str]:
    """One line per config key whose model name torchvision does not know (empty if all do)."""
    keys: dict[str, list[str]] = {}  # the key that sets a model -> the experiments it reaches
    for name, overrides in config["experiments"].items():
        key = f"experiments.{name}.model" if "model" in (overrides or {}) else "train.model"
        if experiment_config(config, name)["model"] not in TESTED_MODELS:
            keys.setdefault(key, []).append(name)
    if not keys:
        return []
    try:
        known = classification_models()
    except ImportError:
        return []
    lines = []
    for key, experiments in keys.items():
        model = experiment_config(config, experiments[0])["model"]
        if model in known:
            continue
        close = difflib.get_close_matches(model, known, n=3)
        tested = f"tested: {', '.join(TESTED_MODELS)}"
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else tested
        runs = ("experiment " if len(experiments) == 1 else "experiments ") + ", ".join(
            map(repr, experiments)
        )
        lines.append(
            f"{key}: {model!r} ({runs}) is not a torchvision classification model ({hint}): "
            "use a name from torchvision.models.list_models()."
        )
    return lines
