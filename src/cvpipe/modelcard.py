"""Model card stage: one readable summary per experiment, from files the pipeline already wrote.

`MODEL_CARD.md` says what the model is, which data it learned from, how it was trained, how it
scored on the test split, what it cannot know, how to run it and what produced it;
`MODEL_CARD.html` is the same card for the Snakemake report (which shows HTML and only offers
other text files for download). Both are rendered from one list of blocks, so they never differ.

It reads JSON and CSV only (no torch, no OpenCV): the manifest, the cache's `stats.json`,
`provenance.json`, `eval/metrics.json` and `train/history.csv`. Nothing in the card depends on
when it was written, so a rerun on the same inputs writes the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvpipe import atomic
from cvpipe.errors import CvpipeError

# --- the card as blocks, rendered to Markdown and to HTML --------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Paragraph | Bullets | Table | Code


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """The card as Markdown (GitHub flavour: pipe tables, fenced code)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [block.header, ["---"] * len(block.header), *block.rows]
            parts.append("\n".join(f"| {' | '.join(map(_md_cell, ln))} |" for ln in lines))
        else:
            parts.append(f"```sh\n{block.text}\n```")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> (the only inline markup we write)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<pre><code>{html.escape(block.text, quote=False)}</code></pre>"


STYLE = (
    "body{font-family:sans-serif;font-size:13px;max-width:60em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;"
    "overflow-wrap:anywhere}pre{background:#f4f4f4;padding:6px 10px}"
)


def to_html(blocks: list[Block], title: str) -> str:
    """The card as one self-contained HTML page (what the Snakemake report shows)."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n"
        + "\n".join(_html_block(b) for b in blocks)
        + "\n</body></html>\n"
    )


# --- reading the pipeline's files --------------------------------------------------------------


@dataclass(frozen=True)
class CardInputs:
    """The files a card is made from (the rule's inputs)."""

    manifest: str
    stats: str
    provenance: str
    metrics: str
    history: str


@dataclass(frozen=True)
class Run:
    """Everything one card says, read from the inputs."""

    experiment: str
    files: CardInputs
    manifest: list[dict[str, str]]
    manifest_sha256: str
    stats: dict
    provenance: dict
    metrics: dict
    history: list[dict[str, str]]
    data_root: str
    model_file: str
    onnx_file: str

    @property
    def config(self) -> dict:
        return self.provenance["config"]

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])


RERUN = "run the workflow again (snakemake), which remakes what is missing or stale"


def _read_json(path: str, keys: tuple[str, ...]) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CvpipeError(f"{path} does not exist; the model card needs it: {RERUN}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CvpipeError(f"{path} is not valid JSON ({exc}): {RERUN}") from None
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise CvpipeError(f"{path} has no {', '.join(missing)}: {RERUN}")
    return data


def _read_csv(path: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
    except FileNotFoundError:
        raise CvpipeError(f"{path} does not exist; the model card needs it: {RERUN}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CvpipeError(f"{path} is not a readable CSV file ({exc}): {RERUN}") from None
    missing = [c for c in columns if c not in fields]
    if missing:
        raise CvpipeError(f"{path} has no column {', '.join(missing)}: {RERUN}")
    return rows


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_same_data(run: Run) -> None:
    """The card describes one model on one data set: the manifest, the cache the model learned
    from, its provenance and its evaluation must agree, or the card would mix two runs."""
    sources = {
        run.files.stats: run.stats.get("manifest_sha256"),
        run.files.provenance: run.provenance.get("data", {}).get("manifest_sha256"),
    }
    for path, recorded in sources.items():
        if recorded != run.manifest_sha256:
            raise CvpipeError(
                f"{path} records manifest sha256 {recorded}, but {run.files.manifest} hashes to "
                f"{run.manifest_sha256}: the model was made from other data; {RERUN}"
            )
    if list(run.stats["classes"]) != run.classes:
        raise CvpipeError(
            f"{run.files.metrics} names the classes {run.classes}, {run.files.stats} "
            f"{run.stats['classes']}: {RERUN}"
        )


def read_run(
    experiment: str, files: CardInputs, data_root: str, model_file: str, onnx_file: str
) -> Run:
    """Read and cross-check the inputs of one experiment's card."""
    run = Run(
        experiment=experiment,
        files=files,
        manifest=_read_csv(files.manifest, ("path", "class", "split")),
        manifest_sha256=_sha256(files.manifest),
        stats=_read_json(files.stats, ("classes", "image_size", "resize", "mean", "std")),
        provenance=_read_json(files.provenance, ("config", "git", "code", "versions")),
        metrics=_read_json(files.metrics, ("classes", "accuracy", "per_class", "epoch")),
        history=_read_csv(files.history, ("epoch",)),
        data_root=data_root,
        model_file=model_file,
        onnx_file=onnx_file,
    )
    _check_same_data(run)
    return run


# --- the sections ------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the card shows it; missing or undefined (NaN, null) as `n/a`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _code_list(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


RESIZE_TEXT = {
    "crop": "crop: the shorter side scaled to {s} px, then the centre {s} × {s} square",
    "letterbox": "letterbox: the longer side scaled to {s} px, the rest padded black",
}


def _normalisation(run: Run) -> str:
    """As training resolves `normalize` (cvpipe.parts): `auto` is ImageNet's statistics for
    pretrained weights, the data set's otherwise."""
    mode = run.config.get("normalize", "auto")
    if mode == "auto":
        mode = "dataset" if run.config.get("weights", "none") == "none" else "imagenet"
    if mode == "imagenet":
        return "ImageNet's per-channel mean and std (what the pretrained weights expect)"
    mean = ", ".join(fmt(v, 3) for v in run.stats["mean"])
    std = ", ".join(fmt(v, 3) for v in run.stats["std"])
    return f"the training split's per-channel mean ({mean}) and std ({std}), RGB on 0–1 values"


def model_section(run: Run) -> list[Block]:
    cache_size = run.stats["image_size"]  # the cache's side; training's size may be smaller
    size = run.config.get("image_size", cache_size)
    resize = run.stats["resize"]
    resize_text = RESIZE_TEXT.get(resize, "{m}").format(s=cache_size, m=resize)
    if size != cache_size:
        resize_text += f"; then the centre {size} × {size} px (training: random resized crops)"
    weights = run.config.get("weights", "none")
    monitor = run.config.get("monitor", "val_acc")
    rows = [
        ["architecture", f"`{run.config.get('model', run.metrics.get('model'))}` (torchvision)"],
        ["initial weights", "none (trained from scratch)" if weights == "none" else f"`{weights}`"],
        ["classes", f"{len(run.classes)}: {_code_list(run.classes)}"],
        ["input", f"{size} × {size} px, RGB"],
        ["resize", resize_text],
        ["normalisation", _normalisation(run)],
        ["model file", f"`{run.model_file}`: epoch {run.metrics['epoch']}, best by `{monitor}`"],
    ]
    return [Heading("Model"), Table(["", ""], rows)]


def _split_counts(run: Run) -> Table:
    counts = Counter((r["class"], r["split"]) for r in run.manifest)
    splits = ["train", "val", "test"]
    rows = [
        [name, *(str(counts[name, s]) for s in splits), str(sum(counts[name, s] for s in splits))]
        for name in run.classes
    ]
    totals = [sum(counts[n, s] for n in run.classes) for s in splits]
    rows.append(["all", *map(str, totals), str(sum(totals))])
    return Table(["class", *splits, "total"], rows)


def _most_common(counter: Counter, limit: int = 5) -> str:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{key} ({n} images)" for key, n in ranked[:limit]]
    more = f" and {len(ranked) - limit} more" if len(ranked) > limit else ""
    return ", ".join(shown) + more


def image_facts(manifest: list[dict[str, str]]) -> list[str]:
    """What the manifest records about the images: formats, and sizes and channels if present."""
    formats = Counter(Path(r["path"]).suffix.lstrip(".").upper() or "?" for r in manifest)
    facts = [f"formats: {_most_common(formats)}"]
    if manifest and "width" in manifest[0] and "height" in manifest[0]:
        sizes = Counter(f"{r['width']} × {r['height']} px" for r in manifest)
        facts.append(f"stored sizes (width × height): {_most_common(sizes)}")
    if manifest and "channels" in manifest[0]:
        channels = Counter(r["channels"] for r in manifest)
        facts.append(f"colour channels as stored: {_most_common(channels)}")
    return facts


def data_section(run: Run) -> list[Block]:
    intro = (
        f"The images under `{run.data_root}`, as listed in `{run.files.manifest}` "
        f"(sha256 `{run.manifest_sha256}`): one row per image that decoded, with its class "
        "(its folder) and split. Images per class and split:"
    )
    return [
        Heading("Data"),
        Paragraph(intro),
        _split_counts(run),
        Bullets(image_facts(run.manifest)),
    ]


def _flatten(config: dict, prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append([f"`{prefix}{key}`", f"`{json.dumps(value)}`"])
    return rows


def _best_row(run: Run) -> dict[str, str]:
    epoch = str(run.metrics["epoch"])
    return next((r for r in run.history if r["epoch"] == epoch), {})


def training_section(run: Run) -> list[Block]:
    monitor = run.config.get("monitor", "val_acc")
    best = _best_row(run)
    training = run.provenance.get("training", {})
    summary = [
        f"epochs run: {len(run.history)} (`{run.files.history}`)",
        f"model kept: epoch {run.metrics['epoch']}, its `{monitor}` "
        f"{fmt(_float(best.get(monitor)))}",
    ]
    if "world_size" in training:
        summary.append(
            f"processes: {training['world_size']}, global batch {training.get('global_batch')}, "
            f"mixed precision `{training.get('amp_dtype')}`"
        )
    if "started_unix" in training and "finished_unix" in training:
        seconds = training["finished_unix"] - training["started_unix"]
        summary.append(f"training time of the last job: {seconds:.0f} s")
    return [
        Heading("Training settings"),
        Paragraph(f"The experiment's effective settings (`config` in `{run.files.provenance}`):"),
        Table(["setting", "value"], _flatten(run.config)),
        Bullets(summary),
    ]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


OVERALL = {
    "accuracy": "accuracy",
    "macro_precision": "macro precision",
    "macro_recall": "macro recall",
    "macro_f1": "macro F1",
    "macro_roc_auc": "macro ROC-AUC (one vs rest)",
    "log_loss": "log loss",
}


def metrics_section(run: Run) -> list[Block]:
    m = run.metrics
    overall = [[label, fmt(m[key])] for key, label in OVERALL.items() if key in m]
    per_class = [
        [f"`{name}`", *(fmt(m["per_class"][name].get(k)) for k in ("precision", "recall", "f1")),
         fmt(m["per_class"][name].get("roc_auc")), fmt(m["per_class"][name].get("support"))]
        for name in run.classes
    ]  # fmt: skip
    intro = (
        f"On the {fmt(m.get('num_samples'))} images of the test split, which neither training "
        f"nor the choice of epoch saw (`{run.files.metrics}`)"
        + (
            ", log loss and ROC-AUC of the temperature-scaled probabilities:"
            if "calibration" in m
            else ":"
        )
    )
    return [
        Heading("Test metrics"),
        Paragraph(intro),
        Table(["metric", "value"], overall),
        Table(["class", "precision", "recall", "F1", "ROC-AUC", "support"], per_class),
    ]


CALIBRATION_NAMES = {
    "ece": "expected calibration error (ECE)",
    "mce": "maximum calibration error (MCE)",
    "nll": "negative log-likelihood (NLL)",
}


def _calibration_notes(calibration: dict) -> list[Block]:
    """The temperature (and what it was fitted on) and the bins, where recorded."""
    notes = []
    if "temperature" in calibration:
        fit = calibration.get("fit")
        images = fit.get("images") if isinstance(fit, dict) else None
        fitted = f", fitted on {images} validation images" if images else ""
        notes.append(
            f"Temperature T = {fmt(calibration['temperature'])}{fitted}: the probabilities "
            "the model reports are softmax(logits / T)."
        )
    if isinstance(calibration.get("n_bins"), int):
        notes.append(f"ECE and MCE over {calibration['n_bins']} equal-width confidence bins.")
    return [Paragraph(" ".join(notes))] if notes else []


def calibration_section(run: Run) -> list[Block]:
    """Whatever numbers `metrics.json`'s `calibration` holds; `X_scaled` beside `X`."""
    found = run.metrics.get("calibration")
    calibration = found if isinstance(found, dict) else {}
    scalars = {
        key: value
        for key, value in calibration.items()
        if key not in ("temperature", "n_bins")
        and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))
    }
    if not calibration:
        return [
            Heading("Calibration"),
            Paragraph(
                f"Calibration was not computed (`{run.files.metrics}` has no `calibration` "
                "section): how far the predicted probabilities can be read as probabilities is "
                "unknown. Treat them as scores for ranking, not as chances."
            ),
        ]
    bases = dict.fromkeys(key.removesuffix("_scaled") for key in scalars)
    rows = [
        [CALIBRATION_NAMES.get(k, f"`{k}`"), fmt(scalars.get(k)), fmt(scalars.get(f"{k}_scaled"))]
        for k in bases
    ]
    intro = Paragraph(f"On the test split (`calibration` in `{run.files.metrics}`):")
    table = Table(["quantity", "as trained", "with temperature scaling"], rows)
    return [
        Heading("Calibration"),
        intro,
        *_calibration_notes(calibration),
        *([table] * bool(rows)),
    ]


def _range(counts: list[int]) -> str:
    low, high = min(counts, default=0), max(counts, default=0)
    return str(low) if low == high else f"{low} to {high}"


def _data_limits(run: Run) -> list[str]:
    """What the data set was: how many images per class, which the smallest, how tested."""
    per_class = Counter(r["class"] for r in run.manifest)
    train = Counter(r["class"] for r in run.manifest if r["split"] == "train")
    test = Counter(r["class"] for r in run.manifest if r["split"] == "test")
    smallest = min(run.classes, key=lambda name: (per_class[name], name))
    if len({per_class[n] for n in run.classes}) == 1:
        size_note = f"every class has {per_class[smallest]}"
    else:
        size_note = f"the smallest class, `{smallest}`, has {per_class[smallest]}"
    return [
        f"The data set has {len(run.manifest)} images "
        f"({', '.join(f'`{n}` {per_class[n]}' for n in run.classes)}); {size_note}. The model "
        f"learned from the {sum(train.values())} of the train split "
        f"({_range([train[n] for n in run.classes])} per class). The test split has "
        f"{_range([test[n] for n in run.classes])} images per class: each per-class score "
        "above rests on that few, and a handful of images more or less can move it a lot.",
        "Every image it saw came from this one data set ("
        + "; ".join(image_facts(run.manifest))
        + f"), resized to {run.stats['image_size']} px square ({run.stats['resize']}). Photos "
        "from other cameras, lighting, backgrounds, distances or resolutions may score worse "
        "than the test metrics say.",
        "The test images come from the same source as the training images: each class is "
        "split by a hash of the file path, and identical files share a split, but near "
        "copies (the same scene shot twice, a re-encoded file) can land on both sides and make "
        "the test scores optimistic.",
    ]


def limits_section(run: Run) -> list[Block]:
    known = (
        f"It knows {len(run.classes)} classes: {_code_list(run.classes)}. It has no answer for "
        '"none of these": any other image (another object, an empty scene, a photo of '
        "something else) still gets one of these labels, often with a high probability."
    )
    check = "Check it on a labelled sample of your own photos before relying on it."
    return [Heading("Intended use and limits"), Bullets([known, *_data_limits(run), check])]


def predict_section(run: Run) -> list[Block]:
    return [
        Heading("How to predict"),
        Paragraph(
            "With cvpipe installed, for a folder of images `photos/` (every image gets one of "
            "the classes above, with the probability of each):"
        ),
        Code(f"cvpipe predict --model {run.model_file} --out predictions.csv photos/"),
        Paragraph(
            f"The same model as ONNX (`{run.onnx_file}`, with `model.json` beside it), which "
            "the workflow builds on request and `cvpipe predict --model` accepts too:"
        ),
        Code(f"snakemake {run.onnx_file}"),
        Paragraph(
            "In another ONNX runtime, prepare each image as in the Model section (size, resize, "
            "normalisation, RGB channel order) and read the outputs in the class order listed "
            "there."
        ),
    ]


def _container(container: dict) -> str:
    if not container or not (container.get("uri") or container.get("image")):
        return "none (the local environment)"
    parts = [f"`{container.get('uri') or container.get('image')}`"]
    if container.get("digest"):
        parts.append(f"digest `{container['digest']}`")
    return ", ".join(parts)


def provenance_section(run: Run) -> list[Block]:
    p = run.provenance
    git, code = p["git"], p["code"]
    dirty = git.get("dirty")
    changed = f" ({git.get('changed_count')} files changed)" if dirty else ""
    device = p.get("device", {})
    rows = [
        ["trained (UTC)", fmt(p.get("created_utc"))],
        ["git commit", f"`{git.get('commit')}` (`{git.get('describe')}`)"],
        ["uncommitted changes", f"{fmt(dirty)}{changed}"],
        [f"code fingerprint ({code.get('stage', 'train')})", f"`{code.get('fingerprint')}`"],
        ["container", _container(p.get("container", {}))],
        ["device", f"{device.get('type')}: {device.get('name')}"],
        ["host", fmt(p.get("host"))],
        *([f"`{name}`", fmt(version)] for name, version in p["versions"].items()),
    ]
    return [
        Heading("Provenance"),
        Paragraph(f"From `{run.files.provenance}`, written by the training job:"),
        Table(["", ""], rows),
    ]


SECTIONS = (
    model_section,
    data_section,
    training_section,
    metrics_section,
    calibration_section,
    limits_section,
    predict_section,
    provenance_section,
)


def model_card(run: Run) -> list[Block]:
    """The card of one experiment, as blocks."""
    accuracy = fmt(run.metrics["accuracy"])
    intro = (
        f"Image classifier `{run.experiment}`: {len(run.classes)} classes, test accuracy "
        f"{accuracy}. Written by `cvpipe model-card` from the workflow's own files."
    )
    blocks: list[Block] = [Heading(f"Model card: {run.experiment}", 1), Paragraph(intro)]
    for section in SECTIONS:
        blocks += section(run)
    return blocks


def write_model_card(run: Run, md_path: str, html_path: str) -> None:
    """Write the card as Markdown and as HTML (atomically)."""
    blocks = model_card(run)
    atomic.write_text(md_path, to_markdown(blocks))
    atomic.write_text(html_path, to_html(blocks, f"Model card: {run.experiment}"))
