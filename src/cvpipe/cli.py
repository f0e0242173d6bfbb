"""`cvpipe <stage>`: the command line the workflow's rules call, one subcommand per stage.

Every subcommand takes explicit paths and settings (no config file is read behind the rule's
back). A `CvpipeError` is printed as one message naming what is wrong, without a traceback, and
the command exits with status 1.

Each subcommand NAME is two functions side by side: `add_NAME` declares its arguments and
`run_NAME` calls the package with keyword arguments. Options the workflow's rules pass are
required (their defaults live in the config schema); allowed values come from the `Literal`
types of `cvpipe.settings`. `cvpipe.stagecode` relies on that pairing: a stage's code
fingerprint holds its own two functions of this file and not the other stages'.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from cvpipe.errors import EXIT_PREEMPTED, CvpipeError, Preempted

log = logging.getLogger("cvpipe")


def _ratios(text: str) -> dict[str, float]:
    """'train=0.7,val=0.15,test=0.15' -> dict."""
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected train=R,val=R,test=R, got {text!r}") from None


def _named_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _required(p: argparse.ArgumentParser, *options: str, **kwargs: Any) -> None:
    """Declare `options` as required, all alike (the rules always pass them)."""
    for option in options:
        p.add_argument(option, required=True, **kwargs)


def add_synth(p: argparse.ArgumentParser) -> None:
    """Draw the built-in synthetic surface-defect data set."""
    from cvpipe.settings import ImageFormat

    p.add_argument("--out", required=True, help="folder to create (one subfolder per class)")
    p.add_argument("--format", required=True, choices=typing.get_args(ImageFormat))
    _required(p, "--images-per-class", "--size", "--seed", "--threads", type=int)


def run_synth(a: argparse.Namespace) -> None:
    from cvpipe.synth import make_dataset

    make_dataset(
        out_dir=a.out, images_per_class=a.images_per_class, size=a.size,
        seed=a.seed, image_format=a.format, threads=a.threads,
    )  # fmt: skip


def add_digits(p: argparse.ArgumentParser) -> None:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 images) as an ImageFolder."""
    p.add_argument("out", help="folder to write: OUT/<digit>/<index>.png")
    p.add_argument(
        "--scale", type=int, default=1,
        help="write each image N times larger, nearest neighbour (default 1: native 8x8)",
    )  # fmt: skip


def run_digits(a: argparse.Namespace) -> None:
    from cvpipe.digits import write_digits

    write_digits(out_dir=a.out, scale=a.scale)


def add_index(p: argparse.ArgumentParser) -> None:
    """Decode-check the data, split it and write the manifest."""
    from cvpipe.settings import OnBadImage, OnConflictingLabels

    _required(p, "--data-root", "--manifest")
    p.add_argument("--bad-images", required=True, help="CSV listing skipped files")
    p.add_argument("--duplicates", required=True, help="CSV listing identical files in a class")
    p.add_argument("--split", type=_ratios, required=True, metavar="train=R,val=R,test=R")
    p.add_argument("--on-bad-image", required=True, choices=typing.get_args(OnBadImage))
    p.add_argument(
        "--on-conflicting-labels", required=True, choices=typing.get_args(OnConflictingLabels)
    )
    _required(p, "--seed", "--threads", type=int)


def run_index(a: argparse.Namespace) -> None:
    from cvpipe.index import write_index

    write_index(
        root=a.data_root, manifest_path=a.manifest, bad_path=a.bad_images, ratios=a.split,
        seed=a.seed, on_bad_image=a.on_bad_image, threads=a.threads,
        duplicates_path=a.duplicates, on_conflicting_labels=a.on_conflicting_labels,
    )  # fmt: skip


def add_preprocess(p: argparse.ArgumentParser) -> None:
    """Decode and resize once into the uint8 cache."""
    from cvpipe.settings import Resize

    p.add_argument("--resize", required=True, choices=typing.get_args(Resize))
    _required(p, "--manifest", "--data-root", "--out-dir")
    _required(p, "--size", "--threads", type=int)


def run_preprocess(a: argparse.Namespace) -> None:
    from cvpipe.preprocess import preprocess

    preprocess(
        manifest_path=a.manifest, data_root=a.data_root, out_dir=a.out_dir, size=a.size,
        mode=a.resize, threads=a.threads,
    )  # fmt: skip


def add_train(p: argparse.ArgumentParser) -> None:
    """Train one experiment (run under torchrun for DDP)."""
    p.add_argument("--config", required=True, help="the experiment's resolved settings, as JSON")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--model", required=True, help="model file to write (best epoch)")
    p.add_argument("--history", required=True, help="per-epoch metrics CSV to write")
    p.add_argument("--provenance", required=True, help="provenance.json to write")
    p.add_argument("--threads", type=int, required=True, help="torch CPU threads per process")
    p.add_argument(
        "--cache-scratch", metavar="DIR", required=True,
        help="copy the cache to this node-local folder first and train from the copy "
        "($VARS expanded in this job; config cache_scratch); '' = train from --cache-dir",
    )  # fmt: skip


def run_train(a: argparse.Namespace) -> None:
    from cvpipe.settings import TrainConfig
    from cvpipe.train import train

    try:
        values: dict = json.loads(a.config)
    except json.JSONDecodeError as exc:
        raise CvpipeError(f"--config is not valid JSON: {exc}") from None
    train(
        cfg=TrainConfig.from_dict(values), cache_dir=a.cache_dir, model_path=a.model,
        history_path=a.history, provenance_path=a.provenance, threads=a.threads,
        cache_scratch=a.cache_scratch,
    )  # fmt: skip


def add_evaluate(p: argparse.ArgumentParser) -> None:
    """Test-split metrics, predictions and inference speed."""
    from cvpipe.settings import Device

    _required(p, "--model", "--cache-dir", "--manifest", "--metrics", "--predictions", "--timing")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", required=True, choices=typing.get_args(Device))
    p.add_argument("--threads", type=int, required=True)


def run_evaluate(a: argparse.Namespace) -> None:
    from cvpipe.evaluate import evaluate

    evaluate(
        model_path=a.model, cache_dir=a.cache_dir, manifest_path=a.manifest,
        metrics_path=a.metrics, predictions_path=a.predictions, timing_path=a.timing,
        batch_size=a.batch_size, device=a.device, threads=a.threads,
    )  # fmt: skip


def add_predict(p: argparse.ArgumentParser) -> None:
    """Class probabilities of new images, from a trained or a torchvision model."""
    from cvpipe.settings import Device, OnBadImage

    p.description = (
        "Class probabilities for image files, folders (recursive) and @list.txt files, as CSV: "
        "path, predicted, top_k, p_<class>..."
    )
    p.add_argument(
        "--model", required=True,
        help="a cvpipe model.pt, a .onnx export (with its model.json) or a torchvision model name",
    )  # fmt: skip
    p.add_argument(
        "--weights",
        help="for a torchvision name: DEFAULT (default), a weights name or a state-dict file",
    )
    p.add_argument("--out", help="CSV to write (default: standard output)")
    p.add_argument("--top-k", type=int, help="classes in the top_k column (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--device", default="auto", choices=typing.get_args(Device))
    p.add_argument(
        "--on-bad-file", default="fail", choices=typing.get_args(OnBadImage),
        help="fail: name every unreadable file and write nothing; skip: predict the others",
    )  # fmt: skip
    p.add_argument("--bad-out", help="CSV listing the skipped files (path, reason)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or @list.txt")


def run_predict(a: argparse.Namespace) -> None:
    from cvpipe.predict import predict

    predict(
        model=a.model, inputs=a.inputs, out=a.out, weights=a.weights, top_k=a.top_k,
        batch_size=a.batch_size, device=a.device, on_bad_file=a.on_bad_file,
        bad_out=a.bad_out, threads=a.threads,
    )  # fmt: skip


def add_export(p: argparse.ArgumentParser) -> None:
    """Export a trained model as ONNX and as a torch.export program, with a model.json."""
    p.add_argument("--model", required=True, help="model.pt written by the train stage")
    p.add_argument(
        "--out-dir", required=True, help="folder for model.onnx, model.pt2 and model.json"
    )


def run_export(a: argparse.Namespace) -> None:
    from cvpipe.export import export

    export(model_path=a.model, out_dir=a.out_dir)


def add_plots(p: argparse.ArgumentParser) -> None:
    """Figures of one experiment."""
    from cvpipe.settings import Resize

    _required(p, "--history", "--metrics", "--predictions", "--manifest", "--data-root")
    _required(p, "--curves", "--confusion", "--samples", "--per-class", "--reliability", "--title")
    p.add_argument("--image-size", type=int, required=True, help="as the model saw the images")
    p.add_argument("--resize", required=True, choices=typing.get_args(Resize))
    _required(p, "--dpi", "--num-samples", type=int)


def run_plots(a: argparse.Namespace) -> None:
    from cvpipe.plots import make_plots

    out: dict[str, str] = {
        "curves": a.curves,
        "confusion": a.confusion,
        "samples": a.samples,
        "per_class": a.per_class,
        "reliability": a.reliability,
    }
    make_plots(
        history_path=a.history, metrics_path=a.metrics, predictions_path=a.predictions,
        manifest_path=a.manifest, data_root=a.data_root, out=out, title=a.title,
        image_size=a.image_size, resize=a.resize, dpi=a.dpi, samples=a.num_samples,
    )  # fmt: skip


def add_gradcam(p: argparse.ArgumentParser) -> None:
    """Grad-CAM heat maps of sample test predictions, right and wrong."""
    from cvpipe.settings import Device

    _required(p, "--model", "--predictions", "--manifest", "--data-root", "--out", "--title")
    _required(p, "--num-samples", "--dpi", "--threads", type=int)
    p.add_argument("--device", required=True, choices=typing.get_args(Device))


def run_gradcam(a: argparse.Namespace) -> None:
    from cvpipe.gradcam import make_gradcam

    make_gradcam(
        model_path=a.model, predictions_path=a.predictions, manifest_path=a.manifest,
        data_root=a.data_root, out=a.out, title=a.title, samples=a.num_samples, dpi=a.dpi,
        device=a.device, threads=a.threads,
    )  # fmt: skip


def add_compare(p: argparse.ArgumentParser) -> None:
    """Table and chart over experiments."""
    # One value per experiment in each list, in the same order (the rule passes its inputs).
    p.add_argument("--experiment", nargs="+", required=True, metavar="NAME")
    _required(p, "--metrics", "--timing", "--provenance", "--history", nargs="+", metavar="PATH")
    _required(p, "--csv", "--md", "--html", "--png", "--metrics-out", "--history-dir")
    _required(p, "--report-metadata")
    _required(p, "--groups-csv", "--groups-md", "--best")  # statistics over seeds
    p.add_argument("--dpi", type=int, required=True)
    p.add_argument("--container", required=True, help="the configured image, for the report")
    p.add_argument(
        "--stage-code", type=_named_path, action="append", required=True, metavar="STAGE=CODE",
        help="the workflow's code fingerprint of a stage, for the report (repeatable)",
    )  # fmt: skip


def run_compare(a: argparse.Namespace) -> None:
    from cvpipe.compare import ExperimentFiles, compare

    files = {key: getattr(a, key) for key in ("metrics", "timing", "provenance", "history")}
    for name, paths in files.items():
        if len(paths) != len(a.experiment):
            raise CvpipeError(
                f"--{name} has {len(paths)} paths for {len(a.experiment)} experiments"
            )
    experiments = {
        name: ExperimentFiles(**{key: paths[i] for key, paths in files.items()})
        for i, name in enumerate(a.experiment)
    }
    out = {"csv": a.csv, "md": a.md, "html": a.html, "png": a.png, "metrics": a.metrics_out}
    out |= {"history_dir": a.history_dir, "report_metadata": a.report_metadata}
    out |= {"groups_csv": a.groups_csv, "groups_md": a.groups_md, "best": a.best}
    compare(
        experiments=experiments,
        out=out,
        dpi=a.dpi,
        stage_code=dict(a.stage_code),
        container=a.container,
    )


def add_model_card(p: argparse.ArgumentParser) -> None:
    """Write an experiment's model card (Markdown, and HTML for the report)."""
    p.add_argument("--experiment", required=True, help="the experiment's name, for the title")
    _required(p, "--manifest", "--stats", "--provenance", "--metrics", "--history", metavar="PATH")
    p.add_argument("--data-root", required=True, help="the data folder, as the card names it")
    p.add_argument("--model-file", required=True, help="model.pt, as `How to predict` names it")
    p.add_argument("--onnx-file", required=True, help="the ONNX export's path, likewise")
    p.add_argument("--out", required=True, help="MODEL_CARD.md to write")
    p.add_argument("--html", required=True, help="the same card as HTML, to write")


def run_model_card(a: argparse.Namespace) -> None:
    from cvpipe.modelcard import CardInputs, read_run, write_model_card

    files = CardInputs(
        manifest=a.manifest, stats=a.stats, provenance=a.provenance, metrics=a.metrics,
        history=a.history,
    )  # fmt: skip
    run = read_run(
        experiment=a.experiment, files=files, data_root=a.data_root, model_file=a.model_file,
        onnx_file=a.onnx_file,
    )  # fmt: skip
    write_model_card(run, md_path=a.out, html_path=a.html)


def add_mlflow_export(p: argparse.ArgumentParser) -> None:
    """Log every finished run under a results folder into MLflow (once each)."""
    p.add_argument("--results", required=True, help="the workflow's results/ folder")
    p.add_argument(
        "--tracking-uri", required=True,
        help="MLflow store, e.g. sqlite:///results/mlflow.db or http://host:5000",
    )  # fmt: skip
    p.add_argument("--experiment", required=True, help="MLflow experiment to log into")
    p.add_argument("--summary", required=True, help="JSON to write: run name -> MLflow run id")


def run_mlflow_export(a: argparse.Namespace) -> None:
    from cvpipe.tracking import export_runs

    export_runs(
        results=a.results, tracking_uri=a.tracking_uri, experiment=a.experiment,
        summary_path=a.summary,
    )  # fmt: skip


def add_config(p: argparse.ArgumentParser) -> None:
    """Print an experiment's resolved training settings (JSON for `cvpipe train --config`)."""
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--configfile",
        action="append",
        help="config file(s), merged in order (default: config/config.yaml)",
    )


def run_config(a: argparse.Namespace) -> None:
    from cvpipe.config import experiment_config, load_configs, with_defaults
    from cvpipe.settings import SCHEMA

    config = with_defaults(load_configs(a.configfile or ["config/config.yaml"]), SCHEMA)
    # experiment_config names an unknown run itself, listing named experiments and sweep runs
    print(json.dumps(experiment_config(config, a.experiment), sort_keys=True))


def add_code(p: argparse.ArgumentParser) -> None:
    """Print the code fingerprint of stages: the modules each runs and their hashes."""
    p.add_argument("stages", nargs="+", metavar="STAGE", help="subcommands, e.g. train plots")
    p.add_argument("--json", action="store_true", help="full hashes as JSON")


def run_code(a: argparse.Namespace) -> None:
    from cvpipe import stagecode

    try:
        result = {stage: stagecode.stage_hashes([stage]) for stage in a.stages}
    except FileNotFoundError as exc:
        raise CvpipeError(str(exc)) from None
    if a.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    for stage, hashes in result.items():
        print(f"{stage}: {stagecode.short(hashes)}")
        for module, digest in sorted(hashes.items()):
            print(f"  {module:<20} {digest[: stagecode.SHORT]}")


def add_gpus(p: argparse.ArgumentParser) -> None:
    """Run a command on GPU ids of its own (sets CUDA_VISIBLE_DEVICES)."""
    p.description = (
        "Lock COUNT free GPU ids (file locks in LOCK_DIR, released when the command exits "
        "however it ends), export CUDA_VISIBLE_DEVICES and run the command."
    )
    p.add_argument("--count", type=int, required=True, help="GPUs the command needs")
    p.add_argument(
        "--lock-dir", help="machine-local lock folder (default: $CVPIPE_GPU_LOCK_DIR or /tmp/...)"
    )
    p.add_argument(
        "--total", type=int, help="GPUs on this machine (default: $CVPIPE_GPU_COUNT, else driver)"
    )
    p.add_argument("--timeout", type=float, help="give up after this many seconds of waiting")
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def run_gpus(a: argparse.Namespace) -> None:
    from cvpipe.gpus import run_with_gpus

    command: list[str] = a.command_args[1:] if a.command_args[:1] == ["--"] else a.command_args
    run_with_gpus(
        count=a.count, command=command, lock_dir=a.lock_dir, total=a.total, timeout=a.timeout
    )


def add_bench(p: argparse.ArgumentParser) -> None:
    """Benchmarks."""
    # Settings that training has too default to training's (the schema's); the rest are the
    # benchmark's own: its data (larger originals, so decoding costs what it would), workers,
    # passes and steps.
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    add_bench_loader(bench.add_parser("loader", help="cache loader vs ImageFolder + PIL, images/s"))
    add_bench_train(
        bench.add_parser("train", help="training images/s: pipeline loader vs on-device tensors")
    )
    add_bench_predict(
        bench.add_parser("predict", help="cvpipe predict on files vs evaluate on the cache, img/s")
    )
    add_bench_preprocess(
        bench.add_parser("preprocess", help="index + preprocess vs PIL + torchvision, img/s, RSS")
    )


def add_bench_loader(b: argparse.ArgumentParser) -> None:
    from cvpipe.settings import TRAIN_DEFAULTS

    b.add_argument(
        "--data-root", help="ImageFolder tree (default: draw the built-in set in a temp dir)"
    )
    b.add_argument("--images-per-class", type=int, default=250, help="size of the drawn set")
    b.add_argument("--source-size", type=int, default=256, help="side of the drawn images")
    b.add_argument(
        "--image-size", type=int, default=TRAIN_DEFAULTS["image_size"], help="training resolution"
    )
    b.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers for both loaders")
    b.add_argument("--epochs", type=int, default=3, help="passes over the data per loader")
    b.add_argument(
        "--policy", default="exact", choices=["exact", "warp"],
        help="exact: the surface preset (flips, quarter turns, jitter); "
        "warp: + bilinear affine",
    )  # fmt: skip
    b.add_argument("--threads", type=int, help="torch threads (default: as many as cores)")
    b.set_defaults(func=run_bench_loader)


def add_bench_train(b: argparse.ArgumentParser) -> None:
    from cvpipe.settings import TRAIN_DEFAULTS, Amp, Device

    b.add_argument("--models", default="resnet50,resnet18", help="comma-separated model names")
    b.add_argument("--data-root", help="ImageFolder tree (default: draw the built-in set)")
    b.add_argument("--images-per-class", type=int, default=250)
    b.add_argument("--source-size", type=int, default=256)
    b.add_argument("--image-size", type=int, default=TRAIN_DEFAULTS["image_size"])
    b.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    # A fixed precision to set against fp32 (`auto` would name no row's precision).
    amps = [amp for amp in typing.get_args(Amp) if amp != "auto"]
    b.add_argument("--amp", default="bf16", choices=amps)
    b.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=TRAIN_DEFAULTS["channels_last"],
    )
    b.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    b.add_argument("--workers", type=int, default=4, help="DataLoader workers of the pipeline")
    b.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    b.add_argument("--warmup", type=int, default=15, help="untimed steps first (and compile)")
    b.add_argument("--device", default=TRAIN_DEFAULTS["device"], choices=typing.get_args(Device))
    b.add_argument("--threads", type=int)
    b.add_argument("--json", help="also write the results here")
    b.set_defaults(func=run_bench_train)


def add_bench_predict(b: argparse.ArgumentParser) -> None:
    from cvpipe.settings import TRAIN_DEFAULTS

    b.add_argument("--model", default=TRAIN_DEFAULTS["model"], help="untrained, of this name")
    b.add_argument("--model-file", help="a trained model.pt instead (its image size is used)")
    b.add_argument("--data-root", help="ImageFolder tree (default: draw the built-in set)")
    b.add_argument("--images-per-class", type=int, default=250)
    b.add_argument("--source-size", type=int, default=256)
    b.add_argument("--image-size", type=int, default=TRAIN_DEFAULTS["image_size"])
    b.add_argument("--batch-size", type=int, default=256, help="evaluate's batch size")
    b.add_argument("--threads", type=int)
    b.set_defaults(func=run_bench_predict)


def add_bench_preprocess(b: argparse.ArgumentParser) -> None:
    b.add_argument("--data-root", help="ImageFolder tree of JPEGs (default: draw the built-in set)")
    b.add_argument("--images", type=int, default=2000, help="size of the drawn set")
    b.add_argument("--source-size", type=int, default=512, help="side of the drawn JPEGs")
    b.add_argument("--size", type=int, default=224, help="cache side (Resize + CenterCrop)")
    b.add_argument("--workers", type=int, default=2, help="threads of cvpipe, processes of PIL")
    b.add_argument("--repeats", type=int, default=3, help="runs of each, in turn")
    b.add_argument("--json", help="also write the results here")
    b.set_defaults(func=run_bench_preprocess)


def run_bench_preprocess(a: argparse.Namespace) -> None:
    from cvpipe.bench import bench_preprocess

    bench_preprocess(
        data_root=a.data_root, images=a.images, source_size=a.source_size, size=a.size,
        workers=a.workers, repeats=a.repeats, json_path=a.json,
    )  # fmt: skip


def run_bench_loader(a: argparse.Namespace) -> None:
    from cvpipe.bench import bench_loader

    bench_loader(
        data_root=a.data_root, images_per_class=a.images_per_class, source_size=a.source_size,
        image_size=a.image_size, batch_size=a.batch_size, workers=a.workers, epochs=a.epochs,
        policy=a.policy, threads=a.threads,
    )  # fmt: skip


def run_bench_predict(a: argparse.Namespace) -> None:
    from cvpipe.bench import bench_predict

    bench_predict(
        model=a.model, model_file=a.model_file, data_root=a.data_root,
        images_per_class=a.images_per_class, source_size=a.source_size,
        image_size=a.image_size, batch_size=a.batch_size, threads=a.threads,
    )  # fmt: skip


def run_bench_train(a: argparse.Namespace) -> None:
    from cvpipe.bench import bench_train

    bench_train(
        models=a.models.split(","), data_root=a.data_root, images_per_class=a.images_per_class,
        source_size=a.source_size, image_size=a.image_size, batch_size=a.batch_size, amp=a.amp,
        channels_last=a.channels_last, compile=a.compile, workers=a.workers, steps=a.steps,
        warmup=a.warmup, device=a.device, threads=a.threads, json_path=a.json,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for add, run in (
        (add_synth, run_synth), (add_digits, run_digits), (add_index, run_index),
        (add_preprocess, run_preprocess),
        (add_train, run_train), (add_evaluate, run_evaluate), (add_predict, run_predict),
        (add_plots, run_plots), (add_gradcam, run_gradcam), (add_export, run_export),
        (add_compare, run_compare), (add_model_card, run_model_card),
        (add_mlflow_export, run_mlflow_export),
        (add_config, run_config), (add_code, run_code),
        (add_gpus, run_gpus), (add_bench, None),  # each benchmark sets its own function
    ):  # fmt: skip
        # The subcommand's name and one-line help come from its `add_` function; `_` in the
        # function's name is `-` in the command's (`add_model_card`: `cvpipe model-card`).
        help_text = (add.__doc__ or "").splitlines()[0].rstrip(".")
        command = sub.add_parser(
            add.__name__.removeprefix("add_").replace("_", "-"),
            help=help_text[:1].lower() + help_text[1:],
        )
        add(command)
        if run is not None:
            command.set_defaults(func=run)
    return parser


def log_code(command: str) -> None:
    """Say in the job's log which cvpipe runs: where it was imported from, and its fingerprint."""
    from cvpipe import __version__, stagecode

    hashes = stagecode.stage_hashes([command])
    log.info(
        "cvpipe %s from %s; %s code %s",
        __version__,
        stagecode.PACKAGE_DIR,
        command,
        stagecode.short(hashes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        if args.command not in ("code", "config", "bench"):
            log_code(args.command.replace("-", "_"))  # the name of its add_/run_ pair
        args.func(args)
    except CvpipeError as exc:
        print(f"cvpipe {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"cvpipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
