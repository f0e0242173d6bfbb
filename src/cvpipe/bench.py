"""Benchmarks: `cvpipe bench loader` (data loading), `cvpipe bench train` (training steps),
`cvpipe bench predict` (inference on files) and `cvpipe bench preprocess` (building the cache).

`cvpipe bench loader`: train-time loader throughput, cvpipe's cache vs torchvision ImageFolder.

Both loaders deliver the same thing: shuffled training batches of `image_size` x `image_size`
float tensors, flipped, turned by a random multiple of 90 degrees, brightness/contrast-jittered
and normalised (the `surface` preset, the built-in set's policy), from the same training images,
with the same batch size. The baseline is what a user would otherwise write:
`ImageFolder` + PIL decode + torchvision transforms (Resize, CenterCrop, RandomHorizontalFlip,
RandomVerticalFlip, a random quarter turn, ColorJitter, ToTensor, Normalize) in DataLoader
workers.
cvpipe's loader slices the preprocessed uint8 cache and augments whole batches with tensor ops
(`cvpipe.augment`), here on the CPU. The one-off cost of building the cache is reported too.

`cvpipe bench predict`: inference images/s of `cvpipe predict` on image files (decode, resize,
normalise, model; what a user's new photos go through) against the evaluate stage on the
preprocessed cache (the model alone, fed from memory), same model, images and batch size. Files
must stay within 2x of the cache: predict decodes every image, evaluate decoded them once.

`cvpipe bench train`: training images/s of cvpipe's real training step (the `train_one_epoch`
of `cvpipe.train`, with its AMP, channels-last and compile settings) fed by (a) the pipeline's
loader (cache -> pinned memory -> device, augmentation on the device) and (b) one batch already
resident on the device, the upper limit; each for the requested AMP mode, fp32, and compiled.

`cvpipe bench preprocess`: cvpipe's index and preprocess stages (each in a fresh Python that
reports its time and peak RSS) against PIL + torchvision Resize + CenterCrop in a process pool,
on the same JPEGs with the same number of workers, run after run (BENCHMARKS.md, "Preprocess").
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from cvpipe import atomic, runtime
from cvpipe.augment import train_transform
from cvpipe.data import CacheSplit, build_loader, read_stats
from cvpipe.index import read_manifest, split_rows, write_index
from cvpipe.preprocess import preprocess
from cvpipe.settings import CONFIG_DEFAULTS, Amp, AugmentPolicy, Device, TrainConfig
from cvpipe.synth import CLASSES, make_dataset

if TYPE_CHECKING:
    from cvpipe.distributed import DistEnv

# The augmentation both loaders apply: `exact` is the `surface` preset (AugmentPolicy()); `warp`
# swaps the quarter turns for the bilinear rotation/zoom/shift (torchvision's RandomAffine in
# the baseline).
POLICIES = {
    "exact": AugmentPolicy(),
    "warp": dataclasses.replace(
        AugmentPolicy(), rot90=False, rotate=180, scale=0.1, translate=0.05
    ),
}


def imagefolder_loader(
    root: Path,
    keep: set[str],
    size: int,
    mean,
    std,
    batch_size: int,
    workers: int,
    policy: AugmentPolicy,
) -> DataLoader:
    """The baseline: ImageFolder over the same training files, PIL decode, torchvision aug."""
    if policy.rot90:  # quarter turns: exact on square images, like cvpipe's rot90
        turn = transforms.RandomChoice(
            [transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]
        )
    else:
        turn = transforms.RandomAffine(
            policy.rotate,
            translate=(policy.translate,) * 2,
            scale=(1 - policy.scale, 1 + policy.scale),
        )
    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            turn,
            transforms.ColorJitter(brightness=policy.brightness, contrast=policy.contrast),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(
        str(root), transform=tf, is_valid_file=lambda p: os.path.relpath(p, root) in keep
    )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip


# The data is prepared as the workflow's defaults would: the same split, seeds and resizing.
DATA = CONFIG_DEFAULTS["data"]
TRAIN_FRACTION = DATA["split"]["train"]


def prepare_data(
    data_root: str | None, images_per_class: int, source_size: int, image_size: int, work: Path
) -> tuple[Path, Path, Path, float]:
    """Data root (drawn unless given), manifest and cache in `work`, and the cache build time."""
    cpus = os.cpu_count() or 1
    root = Path(data_root) if data_root else work / "data"
    if not data_root:
        seed = CONFIG_DEFAULTS["synth"]["seed"]
        make_dataset(root, images_per_class, source_size, seed=seed, threads=cpus)
    manifest = work / "manifest.csv"
    write_index(
        root, manifest, work / "bad.csv", DATA["split"], seed=DATA["split_seed"],
        on_bad_image="skip", threads=cpus,
    )  # fmt: skip
    started = time.perf_counter()
    resize = CONFIG_DEFAULTS["preprocess"]["resize"]
    preprocess(manifest, root, work / "cache", image_size, resize, cpus)
    return root, manifest, work / "cache", time.perf_counter() - started


def measure(batches, epochs: int, make_input) -> float:
    """Images/s over `epochs` passes, not counting the first batch (worker start-up)."""
    count, started = 0, 0.0
    for _ in range(epochs):
        for images, _labels in batches():
            x = make_input(images)
            if not started:
                started = time.perf_counter()
                continue
            count += x.shape[0]
    return count / (time.perf_counter() - started)


def bench_loader(
    *,
    data_root: str | None,
    images_per_class: int,
    source_size: int,
    image_size: int,
    batch_size: int,
    workers: int,
    epochs: int,
    policy: str,
    threads: int | None,
) -> list[dict]:
    """Run the comparison and print a table; returns its rows.

    `data_root` None draws the built-in set (`images_per_class` images of `source_size` px);
    `policy` is a key of POLICIES; `threads` None leaves torch's default.
    """
    logging.getLogger("cvpipe").setLevel(logging.WARNING)
    runtime.set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        root, manifest, cache, preprocess_s = prepare_data(
            data_root, images_per_class, source_size, image_size, Path(tmp)
        )
        train_paths = {r["path"] for r in split_rows(read_manifest(manifest), "train")}
        rows = _loader_rates(
            root, train_paths, cache, image_size, batch_size, workers, epochs, POLICIES[policy]
        )
    cpu = runtime.device_name(torch.device("cpu"))
    print(
        f"\nLoader benchmark: {len(train_paths)} training images ({source_size} px originals"
        f" -> {image_size} px), batch {batch_size}, {epochs} passes, "
        f"{os.cpu_count()} CPUs ({cpu}), torch threads {torch.get_num_threads()}"
    )
    print(f"One-off preprocessing into the cache: {preprocess_s:.1f} s\n")
    print(f"| {'loader':<44} | workers | images/s | vs ImageFolder |")
    print(f"|{'-' * 46}|---------|----------|----------------|")
    base_rate = rows[-1]["images_per_s"]
    for r in rows:
        rate, ratio = r["images_per_s"], r["images_per_s"] / base_rate
        print(f"| {r['loader']:<44} | {r['workers']:>7} | {rate:>8.0f} | {ratio:>13.1f}x |")
    return rows


def _loader_rates(
    root: Path,
    train_paths: set[str],
    cache: Path,
    image_size: int,
    batch_size: int,
    workers: int,
    epochs: int,
    augment: AugmentPolicy,
) -> list[dict[str, Any]]:
    """Images/s of cvpipe's loader (without and with workers), then of the ImageFolder baseline
    (last row), each with the same augmentation."""
    stats = read_stats(cache)
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    gen = torch.Generator().manual_seed(0)

    def cvpipe_input(images):
        return train_transform(images, augment, mean, std, gen)

    rows: list[dict[str, Any]] = []
    for n in sorted({0, workers}):
        loader = build_loader(CacheSplit(cache, "train"), batch_size, train=True, num_workers=n)
        rate = measure(lambda loader=loader: loader, epochs, cvpipe_input)
        rows.append(
            {"loader": "cvpipe cache + batched tensor aug", "workers": n, "images_per_s": rate}
        )
    baseline = imagefolder_loader(
        root, train_paths, image_size, stats["mean"], stats["std"], batch_size, workers, augment
    )
    base_rate = measure(lambda: baseline, epochs, lambda images: images)
    name = "ImageFolder + PIL + torchvision transforms"
    rows.append({"loader": name, "workers": workers, "images_per_s": base_rate})
    return rows


def _steps(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from `loader`, epoch after epoch, as the training loop would see them."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _resident(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device):
    """The same batch, already on the device, forever: the loader's upper limit."""
    images, labels = (t.to(device) for t in batch)
    while True:
        yield images, labels


def train_rate(parts, batches: Iterator, steps: int, warmup: int, env) -> float:
    """Training images/s over `steps` steps of cvpipe's real step, after `warmup` steps."""
    from cvpipe.epoch import train_one_epoch

    def run(n: int) -> None:
        # train_one_epoch reads its loss totals at the end, which waits for the device.
        train_one_epoch(parts, itertools.islice(batches, n), env)

    run(warmup)
    started = time.perf_counter()
    run(steps)
    return steps * parts.train_loader.batch_size / (time.perf_counter() - started)


def bench_train(
    *,
    models: list[str],
    data_root: str | None,
    images_per_class: int,
    source_size: int,
    image_size: int,
    batch_size: int,
    amp: Amp,
    channels_last: bool,
    compile: bool,
    workers: int,
    steps: int,
    warmup: int,
    device: Device,
    threads: int | None,
    json_path: str | None,
) -> list[dict]:
    """Training images/s: real loader vs on-device tensors, `amp` vs fp32, eager vs compiled
    (with `compile`). Settings not named here are TrainConfig's defaults (the schema's)."""
    params = dict(locals())  # for the JSON record
    from cvpipe import distributed

    logging.getLogger("cvpipe").setLevel(logging.WARNING)
    runtime.set_threads(threads)
    env = distributed.init(device)
    # As training does (train.py): cuDNN picks the fastest kernels for the fixed input shape.
    torch.backends.cudnn.benchmark = True
    # (a) must see the loader in its steady state, not restarting its workers every few steps:
    # draw enough images for every timed and warm-up step to come from one epoch.
    if not data_root:
        needed = math.ceil((steps + warmup + 1) * batch_size / (TRAIN_FRACTION * len(CLASSES)))
        images_per_class = params["images_per_class"] = max(images_per_class, needed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        _, _, cache, _ = prepare_data(
            data_root, images_per_class, source_size, image_size, Path(tmp)
        )
        stats = read_stats(cache)
        # The configured precision, fp32 for comparison, and compiled with `compile`.
        variants = dict.fromkeys(
            [(amp, False), ("off", False), *([(amp, True)] if compile else [])]
        )
        for model in models:
            for precision, compiled in variants:
                cfg = TrainConfig(
                    model=model, image_size=image_size, batch_size=batch_size, amp=precision,
                    channels_last=channels_last, compile=compiled, num_workers=workers,
                    device=device, epochs=1000,
                )  # fmt: skip
                rates = _train_rates(cfg, stats, cache, env, steps, warmup)
                rows.append({"model": model, "amp": rates["amp"], "compile": compiled, **rates})
    _report_train(rows, env.device, params)
    return rows


def _train_rates(
    cfg: TrainConfig, stats: dict, cache: Path, env: DistEnv, steps: int, warmup: int
) -> dict[str, Any]:
    """The autocast dtype, and training images/s from the pipeline's loader and from one batch
    kept on the device, each with fresh weights and optimizer."""
    from cvpipe.parts import build_parts

    parts = build_parts(cfg, stats, cache, env)
    first = next(iter(parts.train_loader))
    loader_rate = train_rate(parts, _steps(parts.train_loader), steps, warmup, env)
    parts = build_parts(cfg, stats, cache, env)
    resident_rate = train_rate(parts, _resident(first, env.device), steps, warmup, env)
    return {
        "amp": parts.amp, "loader_images_per_s": loader_rate,
        "resident_images_per_s": resident_rate,
    }  # fmt: skip


def _report_train(rows: list[dict[str, Any]], device: torch.device, params: dict) -> None:
    """Print the table of `bench_train`; with `json_path` in `params`, write it as JSON too."""
    device_name = runtime.device_name(device)
    print(
        f"\nTraining throughput on {device} ({device_name}): {params['image_size']} px, batch "
        f"{params['batch_size']}, channels_last {params['channels_last']}, {params['steps']} "
        f"timed steps after {params['warmup']} warm-up steps, torch {torch.__version__}\n"
    )
    print("| model | amp | compile | (a) pipeline loader img/s | (b) on-device img/s | (a)/(b) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["loader_images_per_s"] / r["resident_images_per_s"]
        print(
            f"| {r['model']} | {r['amp']} | {r['compile']} | {r['loader_images_per_s']:.0f} "
            f"| {r['resident_images_per_s']:.0f} | {ratio:.2f} |"
        )
    if params["json_path"]:
        record = {"device": device_name, "args": params, "rows": rows}
        atomic.write_text(params["json_path"], json.dumps(record, indent=2, default=str))


def _random_model_file(model: str, image_size: int, stats: dict, path: Path) -> Path:
    """A model.pt as training writes it, with untrained weights (speed does not depend on them)."""
    from cvpipe.models import build_model

    saved = {
        "model": build_model(model, len(stats["classes"])).state_dict(),
        "model_name": model, "classes": stats["classes"], "image_size": image_size,
        "resize": CONFIG_DEFAULTS["preprocess"]["resize"], "mean": stats["mean"],
        "std": stats["std"], "epoch": 0, "temperature": 1.0,
        "config": TrainConfig(model=model, image_size=image_size).as_dict(),
    }  # fmt: skip
    torch.save(saved, path)
    return path


def _predict_rate(model_file: Path, files: list[Path], batch_size: int, threads: int) -> float:
    """Images/s of `cvpipe predict` over `files`, after one untimed batch (threads, allocator)."""
    from cvpipe.predict import load_predictor, run_batches

    predictor = load_predictor(str(model_file), None, torch.device("cpu"))
    run_batches(predictor, files[:batch_size], batch_size, threads, stop_on_bad=False)
    started = time.perf_counter()
    paths, _, _ = run_batches(predictor, files, batch_size, threads, stop_on_bad=False)
    return len(paths) / (time.perf_counter() - started)


def bench_predict(
    *,
    model: str,
    model_file: str | None,
    data_root: str | None,
    images_per_class: int,
    source_size: int,
    image_size: int,
    batch_size: int,
    threads: int | None,
) -> dict[str, Any]:
    """`cvpipe predict` on the train split's files vs evaluate's inference on its cache (CPU)."""
    from cvpipe.evaluate import load_model
    from cvpipe.evaluate import predict as evaluate_predict

    logging.getLogger("cvpipe").setLevel(logging.WARNING)
    runtime.set_threads(threads)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        if model_file:  # a trained model decides the size the data is prepared at
            image_size = load_model(model_file, cpu)[1]["image_size"]
        root, manifest, cache, _ = prepare_data(
            data_root, images_per_class, source_size, image_size, Path(tmp)
        )
        path = Path(model_file or _random_model_file(
            model, image_size, read_stats(cache), Path(tmp) / "model.pt"
        ))  # fmt: skip
        net, saved = load_model(path, cpu)
        split = CacheSplit(cache, "train")
        files = [root / r["path"] for r in split_rows(read_manifest(manifest), "train")]
        cache_rate = evaluate_predict(net, saved, split, cpu, batch_size)[2]
        files_rate = _predict_rate(path, files, batch_size, torch.get_num_threads())
    result = {
        "model": saved["model_name"], "image_size": image_size, "batch_size": batch_size,
        "images": len(files), "source_size": source_size, "threads": torch.get_num_threads(),
        "evaluate_cache_images_per_s": cache_rate, "predict_files_images_per_s": files_rate,
    }  # fmt: skip
    print(
        f"\nInference on the CPU ({runtime.device_name(cpu)}), {result['model']} at "
        f"{image_size} px, batch {batch_size}, {len(files)} images drawn at {source_size} px, "
        f"{result['threads']} threads, torch {torch.__version__}\n\n"
        "| evaluate, cache (img/s) | predict, files (img/s) | evaluate / predict |\n|---|---|---|\n"
        f"| {cache_rate:.0f} | {files_rate:.0f} | {cache_rate / files_rate:.2f} |"
    )
    return result


# A fresh interpreter runs one stage function and reports its own time and peak RSS, so the
# figure is the stage's alone (not this process's torch, nor the baseline's workers). The peak is
# /proc's VmHWM: getrusage's ru_maxrss keeps the forking parent's peak across exec.
_STAGE_CHILD = """
import importlib, json, re, sys, time
module, function, kwargs = json.loads(sys.argv[1])
run = getattr(importlib.import_module(module), function)
started = time.perf_counter()
run(**kwargs)
seconds = time.perf_counter() - started
with open("/proc/self/status") as f:
    peak_kib = int(re.search(r"VmHWM:\\s*(\\d+)", f.read()).group(1))
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))
"""


def _stage_in_child(module: str, function: str, **kwargs: Any) -> dict[str, float]:
    """Run `cvpipe.<module>.<function>(**kwargs)` in a fresh Python: its seconds and peak RSS."""
    import subprocess
    import sys

    args = json.dumps([f"cvpipe.{module}", function, kwargs], default=str)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")
    ]))}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _STAGE_CHILD, args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{module}.{function} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _pil_resize_crop(path: str, size: int) -> Any:
    """The baseline's work for one file: PIL decode, RGB, torchvision Resize + CenterCrop."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        out = transforms.CenterCrop(size)(transforms.Resize(size)(image.convert("RGB")))
    return np.asarray(out)


def _pil_baseline(files: list[Path], size: int, workers: int) -> float:
    """Seconds for PIL + torchvision over `files` in a pool of `workers` processes, the results
    written into one N x size x size x 3 array in file order (what the cache holds)."""
    import functools
    import multiprocessing

    import numpy as np

    started = time.perf_counter()
    out = np.empty((len(files), size, size, 3), np.uint8)
    work = functools.partial(_pil_resize_crop, size=size)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for i, image in enumerate(pool.imap(work, map(str, files), chunksize=16)):
            out[i] = image
    return time.perf_counter() - started


def bench_preprocess(
    *,
    data_root: str | None,
    images: int,
    source_size: int,
    size: int,
    workers: int,
    repeats: int,
    json_path: str | None,
) -> list[dict]:
    """cvpipe index + preprocess vs PIL + torchvision (Resize + CenterCrop) in a process pool,
    on the same files with the same workers, `repeats` times in turn; prints a table."""
    params = dict(locals())
    resize = "crop"  # the baseline's Resize + CenterCrop
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        work = Path(tmp)
        root = Path(data_root) if data_root else work / "data"
        if not data_root:
            per_class = math.ceil(images / len(CLASSES))
            seed = CONFIG_DEFAULTS["synth"]["seed"]
            make_dataset(root, per_class, source_size, seed, "jpg", os.cpu_count() or 1)
        index_args = {
            "root": root, "manifest_path": work / "manifest.csv", "bad_path": work / "bad.csv",
            "ratios": DATA["split"], "seed": DATA["split_seed"], "on_bad_image": "skip",
            "threads": workers,
        }  # fmt: skip
        prep_args = {
            "manifest_path": work / "manifest.csv", "data_root": root, "out_dir": work / "cache",
            "size": size, "mode": resize, "threads": workers,
        }  # fmt: skip
        rows = []
        for run in range(repeats):
            index = _stage_in_child("index", "write_index", **index_args)
            prep = _stage_in_child("preprocess", "preprocess", **prep_args)
            files = [root / r["path"] for r in read_manifest(work / "manifest.csv")]
            base_s = _pil_baseline(files, size, workers)
            rows.append({
                "run": run + 1, "images": len(files), "index_s": index["seconds"],
                "preprocess_s": prep["seconds"], "baseline_s": base_s,
                "preprocess_peak_rss_mib": prep["peak_rss_mib"],
                "index_peak_rss_mib": index["peak_rss_mib"],
            })  # fmt: skip
    _report_preprocess(rows, params)
    return rows


def _report_preprocess(rows: list[dict], params: dict) -> None:
    """Print `bench_preprocess`'s table; with `json_path` in `params`, write it as JSON too."""
    import cv2
    import PIL

    n = rows[0]["images"]
    print(
        f"\nPreprocess benchmark: {n} JPEGs "
        f"({params['data_root'] or str(params['source_size']) + ' px, drawn'}) -> "
        f"{params['size']} px crop, {params['workers']} workers, {os.cpu_count()} CPUs "
        f"({runtime.device_name(torch.device('cpu'))}), OpenCV {cv2.__version__}, "
        f"Pillow {PIL.__version__}, torchvision {torchvision.__version__}\n"
    )
    print(
        "| run | PIL+torchvision img/s | cvpipe preprocess img/s | ratio | index+preprocess img/s"
        " | ratio | preprocess peak RSS MiB | index peak RSS MiB |\n" + "|---" * 8 + "|"
    )
    median = {
        key: statistics.median(r[key] for r in rows)
        for key in ("index_s", "preprocess_s", "baseline_s", "preprocess_peak_rss_mib",
                    "index_peak_rss_mib")
    }  # fmt: skip
    for r in [*rows, {**median, "run": "median"}]:
        base, prep = n / r["baseline_s"], n / r["preprocess_s"]
        both = n / (r["index_s"] + r["preprocess_s"])
        print(
            f"| {r['run']} | {base:.0f} | {prep:.0f} | {prep / base:.2f}x | {both:.0f} | "
            f"{both / base:.2f}x | {r['preprocess_peak_rss_mib']:.0f} | "
            f"{r['index_peak_rss_mib']:.0f} |"
        )
    if params["json_path"]:
        record = {"args": params, "rows": rows}
        atomic.write_text(params["json_path"], json.dumps(record, indent=2, default=str))
