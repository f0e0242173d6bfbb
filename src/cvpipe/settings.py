"""Training settings as Python types, with their defaults read from the workflow's config schema.

workflow/schemas/config.schema.yaml is the one home of every default (`default:`) and allowed
value (`enum:`). This module reads the defaults from there, so `TrainConfig` and `AugmentPolicy`
never hold a second copy, and states the allowed values as `Literal` types, which
tests/test_config.py checks against the schema's enums.

No torch here: the CLI's parsers and the Snakefile's helpers import it too.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cvpipe.errors import CvpipeError

# The package runs from a checkout (src/cvpipe/ beside workflow/), never as an installed copy
# without one: jobs import it from the checkout's src/ (cvpipe.jobenv).
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

# The allowed values of the settings that have a fixed set (the schema's `enum`s).
Amp = Literal["auto", "bf16", "fp16", "off"]
Monitor = Literal["val_acc", "val_macro_f1", "val_loss"]
Resume = Literal["auto", "never"]
Normalize = Literal["auto", "dataset", "imagenet"]
Device = Literal["auto", "cpu", "cuda"]
OnBadImage = Literal["fail", "skip"]
OnConflictingLabels = Literal["fail", "drop"]
ImageFormat = Literal["png", "jpg"]
Resize = Literal["crop", "letterbox"]
Preset = Literal["natural", "surface"]
# What a sweep's runs make beyond training, evaluation and plots (sweep.extras).
SweepExtra = Literal["gradcam", "model_card"]

AMP_MODES: tuple[str, ...] = typing.get_args(Amp)
MONITORS: tuple[str, ...] = typing.get_args(Monitor)
# Keys that say how a run is launched, not what it learns: a checkpoint made with other values
# still resumes (so a job can move between 1 and N processes). The device *type* and AMP dtype
# they resolve to do count (`runtime` in the resume identity, see `train._start_or_resume`).
_NOT_IDENTITY = ("resume", "num_workers", "device", "gpus", "ddp_processes")
# Keys added after checkpoints existed, with the value that means "off": left out of the identity
# while off, so a checkpoint made before they existed still resumes.
_OFF_SINCE_ADDED = {"ema_decay": None, "mixup_alpha": 0, "cutmix_alpha": 0}


def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    if not path.is_file():
        raise CvpipeError(
            f"{path} is missing: cvpipe reads its defaults from the workflow's config schema, "
            "so it must run from a checkout of the repository (src/cvpipe beside workflow/)"
        )
    # libyaml's loader where PyYAML has it: every `cvpipe` command reads the schema at start.
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def defaults(node: dict[str, Any]) -> dict[str, Any]:
    """The `default`s of the keys under a schema object, nested objects filled in below theirs."""
    filled: dict[str, Any] = {}
    for key, sub in node.get("properties", {}).items():
        if "properties" in sub:
            filled[key] = {**sub.get("default", {}), **defaults(sub)}
        elif "default" in sub:
            filled[key] = sub["default"]
    return filled


# Every default of the workflow config (keys without one, like `experiments`, are absent).
CONFIG_DEFAULTS = defaults(load_schema())
TRAIN_DEFAULTS = CONFIG_DEFAULTS["train"]
AUGMENT_DEFAULTS = TRAIN_DEFAULTS["augment"]


def _default(*key: str) -> Any:
    """The schema's default of `train.<key>` (for the dataclass fields below)."""
    value: Any = TRAIN_DEFAULTS
    for name in key:
        value = value[name]
    return value


# The augmentation presets: every key of `train.augment` but `preset`. A key the config leaves
# null takes its preset's value. `surface` is the policy for textures and inspection images
# (no up or left, so flips and quarter turns; the cache is stored at the training size);
# `natural` is torchvision's recipe for photos: RandomResizedCrop from a larger cache, horizontal
# flips only, light colour jitter (vision references/classification/presets.py).
PRESETS: dict[str, dict[str, Any]] = {
    "surface": {
        "random_resized_crop": False,
        "crop_scale": [0.08, 1.0],
        "crop_ratio": [0.75, 4 / 3],
        "hflip": True,
        "vflip": True,
        "rot90": True,
        "rotate": 0.0,
        "scale": 0.0,
        "translate": 0.0,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.0,
        "trivial_augment": False,
        "random_erasing": 0.0,
    },
    "natural": {
        "random_resized_crop": True,
        "crop_scale": [0.25, 1.0],
        "crop_ratio": [0.75, 4 / 3],
        "hflip": True,
        "vflip": False,
        "rot90": False,
        "rotate": 0.0,
        "scale": 0.0,
        "translate": 0.0,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "trivial_augment": False,
        "random_erasing": 0.0,
    },
}

# torchvision's eval transform: Resize(256) then CenterCrop(224), a crop of 0.875 of the side.
CENTRE_CROP_SHARE = 0.875


@dataclass(frozen=True)
class AugmentPolicy:
    """Strengths of each augmentation (see `cvpipe.augment`); zeros switch parts off. The field
    defaults are the `surface` preset; `AugmentPolicy.resolve` applies a config's preset."""

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.0
    trivial_augment: bool = False
    random_erasing: float = 0.0

    @classmethod
    def resolve(cls, augment: dict[str, Any]) -> AugmentPolicy:
        """The policy of a config's `train.augment`: its preset's values, each key the config
        sets (not null) instead. Unknown keys and presets are errors that name them."""
        values = {**AUGMENT_DEFAULTS, **augment}
        preset = values.pop("preset")
        if preset not in PRESETS:
            raise CvpipeError(
                f"train.augment.preset must be one of {sorted(PRESETS)}, not {preset!r}"
            )
        unknown = sorted(set(values) - set(PRESETS[preset]))
        if unknown:
            raise CvpipeError(
                f"unknown augmentation setting(s) {unknown}; known: {sorted(PRESETS[preset])}"
            )
        chosen = {k: PRESETS[preset][k] if v is None else v for k, v in values.items()}
        for key in ("crop_scale", "crop_ratio"):
            low, high = chosen[key]
            if not 0 < low <= high:
                raise CvpipeError(f"train.augment.{key} must be [low, high], 0 < low <= high")
            chosen[key] = (float(low), float(high))
        return cls(**chosen)


@dataclass(frozen=True)
class TrainConfig:
    """One experiment's resolved training settings (documented in config/config.yaml)."""

    model: str = _default("model")
    weights: str = _default("weights")
    image_size: int = _default("image_size")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    weight_decay: float = _default("weight_decay")
    warmup_epochs: float = _default("warmup_epochs")
    label_smoothing: float = _default("label_smoothing")
    ema_decay: float | None = _default("ema_decay")
    mixup_alpha: float = _default("mixup_alpha")
    cutmix_alpha: float = _default("cutmix_alpha")
    amp: Amp = _default("amp")
    channels_last: bool = _default("channels_last")
    compile: bool = _default("compile")
    gpus: int = _default("gpus")
    ddp_processes: int = _default("ddp_processes")
    sync_bn: bool = _default("sync_bn")
    deterministic: bool = _default("deterministic")
    seed: int = _default("seed")
    num_workers: int = _default("num_workers")
    resume: Resume = _default("resume")
    monitor: Monitor = _default("monitor")
    normalize: Normalize = _default("normalize")
    device: Device = _default("device")
    cache_size: int | None = _default("cache_size")
    augment: dict[str, Any] = field(default_factory=lambda: dict(AUGMENT_DEFAULTS))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a config mapping; a missing key takes the schema's default (augmentation
        key by key), an unknown key is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CvpipeError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**{**values, "augment": {**AUGMENT_DEFAULTS, **values.get("augment", {})}})
        cfg.check()
        return cfg

    def check(self) -> None:
        for name, allowed in literal_fields(TrainConfig).items():
            if getattr(self, name) not in allowed:
                raise CvpipeError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.gpus > 0 and self.ddp_processes > 1:
            raise CvpipeError(
                "set either gpus (one process per GPU) or ddp_processes (CPU processes), not both"
            )
        AugmentPolicy.resolve(self.augment)  # unknown augmentation keys fail here
        if self.cache_size is not None and self.cache_size < self.image_size:
            raise CvpipeError(
                f"cache_size {self.cache_size} is smaller than image_size {self.image_size}: "
                "set cache_size to null (auto) or to at least image_size"
            )

    def policy(self) -> AugmentPolicy:
        """The resolved augmentation policy (preset plus the keys this config sets)."""
        return AugmentPolicy.resolve(self.augment)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that determine the trained weights (what resume compares)."""
        return {
            k: v
            for k, v in self.as_dict().items()
            if k not in _NOT_IDENTITY and not (k in _OFF_SINCE_ADDED and v == _OFF_SINCE_ADDED[k])
        }


def cache_side(settings: dict[str, Any], resize: str) -> int:
    """The side of the cache an experiment trains from (`settings`: its train config, as a
    mapping): `cache_size`, or auto: `image_size` for letterboxed images and for a policy without
    random resized crops, else `image_size / 0.875` rounded (torchvision's 256 for 224), so that
    evaluation's centre crop sees what torchvision's eval transform does."""
    size = settings.get("cache_size")
    if size is not None:
        return int(size)
    image_size = int(settings["image_size"])
    if (
        resize == "letterbox"
        or not AugmentPolicy.resolve(settings.get("augment", {})).random_resized_crop
    ):
        return image_size
    return round(image_size / CENTRE_CROP_SHARE)


def literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for the dataclass fields typed with a `Literal`."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }
