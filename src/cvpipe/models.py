"""Torchvision classification models by name, with a new head sized to the data set's classes.

`weights` is one of:

- `none`: random initialisation;
- a torchvision weights name, either short (`DEFAULT`, `IMAGENET1K_V1`) or full
  (`ResNet18_Weights.IMAGENET1K_V1`). The file comes from torch hub's cache
  (`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`) and is downloaded
  there if missing; offline, pre-place it there (the error says the exact path and URL);
- a path to a local `.pt`/`.pth` file: a plain state dict or a cvpipe checkpoint/model file.

The classifier head (the model's last `nn.Linear`) is replaced by one with `num_classes` outputs,
so pretrained weights of any head size load; every other tensor must match.
All files load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from cvpipe import torchfile
from cvpipe.errors import CvpipeError
from cvpipe.modelnames import TESTED_MODELS, classification_models

log = logging.getLogger(__name__)


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Qualified name and module of the model's last Linear layer (its classifier)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CvpipeError(f"{type(model).__name__} has no Linear classifier layer to replace")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last Linear layer for a freshly initialised one with `num_classes` outputs."""
    name, old = classifier_head(model)
    if old.out_features == num_classes:
        return model
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def resolve_named_weights(model_name: str, weights: str) -> torchvision.models.WeightsEnum:
    """torchvision's weights entry for `DEFAULT`, a short name or a full name of the model's."""
    try:
        if "." in weights:
            return torchvision.models.get_weight(weights)
        enum = torchvision.models.get_model_weights(model_name)
        return enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError):
        enum = torchvision.models.get_model_weights(model_name)
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise CvpipeError(
            f"weights {weights!r} is not a torchvision weights name for {model_name}: use one of "
            f"{names}, `none`, or a path to a local .pt/.pth file."
        ) from None


def _download_state_dict(w: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    try:
        return torch.hub.load_state_dict_from_url(
            w.url, progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise CvpipeError(
            f"could not load weights {w} ({exc}).\n"
            f"Without internet access, pre-place the file in torch hub's cache: download\n"
            f"  {w.url}\n"
            f"on a machine with access and copy it to\n"
            f"  {hub_file}\n"
            "(the folder follows $TORCH_HOME; set TORCH_HOME to use another cache folder)."
        ) from None


def load_local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a local file: a plain one, or the weights of a cvpipe model file."""
    if not path.is_file():
        raise CvpipeError(
            f"weights {str(path)!r} is neither `none`, a torchvision weights name, nor an "
            "existing file."
        )
    state = torchfile.load(
        path, "cpu", "give `weights` a state dict or cvpipe model file saved with torch.save"
    )
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a cvpipe checkpoint or model file
    if not isinstance(state, dict):
        raise CvpipeError(f"{path} does not hold a state dict")
    return state


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load everything except a head whose shape differs; anything else must match exactly."""
    head_name, _ = classifier_head(model)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not k.startswith(head_name + ".")]
    if bad:
        raise CvpipeError(
            f"weights from {source} do not fit this model: shape mismatch in {bad[:5]}"
        )
    result = model.load_state_dict(
        {k: v for k, v in state.items() if k not in skipped}, strict=False
    )
    missing = [k for k in result.missing_keys if not k.startswith(head_name + ".")]
    if missing or result.unexpected_keys:
        raise CvpipeError(
            f"weights from {source} do not fit this model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if skipped:
        log.info("loaded %s; the head %r starts fresh for the new classes", source, head_name)


def is_weights_file(weights: str) -> bool:
    """Whether `weights` names a local file rather than torchvision weights."""
    return weights.endswith((".pt", ".pth")) or "/" in weights or Path(weights).is_file()


def build_model(name: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A torchvision classification model with a `num_classes` head (see module docstring)."""
    if name not in classification_models():
        raise CvpipeError(
            f"model {name!r} is not a torchvision classification model. Tested: "
            f"{', '.join(TESTED_MODELS)}; all: torchvision.models.list_models()."
        )
    if weights == "none":
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if is_weights_file(weights):
        state, source = load_local_state_dict(Path(weights)), weights
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        w = resolve_named_weights(name, weights)
        state, source = _download_state_dict(w), str(w)
        model = torchvision.models.get_model(
            name, weights=None, num_classes=len(w.meta["categories"])
        )
        model.load_state_dict(state)
        return replace_head(model, num_classes)
    _load_backbone(model, state, source)
    return model
