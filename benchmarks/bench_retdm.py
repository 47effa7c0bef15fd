"""RETDM's training speed at the paper's size: VGG-16 at 224 px, batch 256, synthetic images.

What is timed (``measure(device, quick)``, one table; CONTRACTS2 item 5):

* the joint stage's step (stage 3: every loss term, the batch composed by RETDM's own sampler of
  anchors and their neighbours' images, so way two has its negatives) and the classification
  stage's step (stage 1: the BCE path alone, the "BCE" baseline's cost) -- images/s after a
  warm-up, uint8 images already on the device (the data pipeline is timed by
  ``bench_image_pipeline.py``), bf16 autocast and channels_last on CUDA as in ``fit``;
* peak device memory of the joint step (CUDA only);
* the neighbour search N_k (k = 10 nearest training label vectors, exact) at MS-COCO's training
  size (82,783 x 80 labels), done once per fit.

Weights are random (``pretrained=False``: the same compute as ImageNet weights, nothing to
download). ``--quick`` shrinks everything (small CNN, 32 px, batch 16, 1,000 label vectors) to
check the script on a CPU in seconds::

    python benchmarks/bench_retdm.py --device cuda          # the paper's size (a few hundred steps)
    python benchmarks/bench_retdm.py --quick --device cpu   # smoke check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import plugins  # noqa: E402
from bench.data import ImageView, MultiLabelData  # noqa: E402
from bench.training import Batch  # noqa: E402

PAPER = {"backbone": "vgg16", "image_size": 224, "batch_size": 256, "n_train": 82783, "labels": 80,
         "steps": 200, "warmup": 10, "search_n": 82783}
QUICK = {"backbone": "small-cnn", "image_size": 32, "batch_size": 16, "n_train": 200, "labels": 10,
         "steps": 2, "warmup": 1, "search_n": 1000}


def synthetic_labels(n: int, labels: int, seed: int = 0) -> np.ndarray:
    """COCO-like label sets: about 2.9 positives per example, label frequencies skewed."""
    rng = np.random.default_rng(seed)
    weight = rng.pareto(1.5, labels) + 0.1
    p = np.minimum(weight / weight.sum() * min(2.9, labels / 3), 0.9)
    return (rng.random((n, labels)) < p).astype(np.uint8)


def prepared_method(size: dict, device: torch.device):
    """A RETDM with its neighbour table and network built as ``fit`` builds them (no data loading)."""
    cls = plugins.get("methods", "retdm")
    method = cls(backbone=size["backbone"], pretrained=False, image_size=size["image_size"],
                 batch_size=size["batch_size"], device=str(device))
    Y = synthetic_labels(size["n_train"], size["labels"])
    tiny = ImageView(array=np.zeros((len(Y), 4, 4), np.uint8))   # only its kind matters: image_size is set
    train = MultiLabelData("synthetic", {"image": tiny}, Y, tuple(f"l{i}" for i in range(size["labels"])))
    method.device_, method.inputs_, method.view_dims_, method.view_names_ = device, "image", {}, ()
    method.n_labels_, method._n_train, method._validated = train.n_labels, train.n_samples, False
    method.setup(train)
    method.model_ = method.build_model(train).to(device)
    if device.type == "cuda":
        method.model_.to(memory_format=torch.channels_last)
        method.encoder_.channels_last = True
    return method, Y


def time_steps(method, loss_fn, params, index_batches, Y, size, device) -> float:
    """images/s of ``loss_fn`` + backward + SGD step over ``index_batches`` (after a warm-up)."""
    optimizer = method._optimizer(params)
    side = size["image_size"]
    labels = torch.as_tensor(Y, dtype=torch.float32, device=device)
    largest = max(len(b) for b in index_batches)          # the joint stage's: anchors + neighbour images
    images = torch.randint(0, 256, (largest, 3, side, side), dtype=torch.uint8, device=device)
    method.model_.train()
    n_images, start = 0, None
    for step, idx in enumerate(index_batches[:size["warmup"] + size["steps"]]):
        if step == size["warmup"]:
            _sync(device)
            start, n_images = time.perf_counter(), 0
        index = torch.as_tensor(idx, device=device)
        total, _ = loss_fn(Batch(images[:len(idx)], labels[index], index))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        n_images += len(idx)
    _sync(device)
    return n_images / (time.perf_counter() - start)


def measure(device: str, quick: bool) -> list[dict]:
    size = QUICK if quick else PAPER
    dev = torch.device(device)
    method, Y = prepared_method(size, dev)
    rng = np.random.default_rng(0)
    n_steps = size["warmup"] + size["steps"]
    joint_batches = []
    while len(joint_batches) < n_steps:                     # RETDM's sampler: anchors + neighbour images
        joint_batches += _retdm_module().neighbour_batches(method._neighbours_np, method._valid_np,
                                                           size["batch_size"], method._per_anchor(), rng)
    plain = [rng.permutation(len(Y))[:size["batch_size"]] for _ in range(n_steps)]
    image = [p for m in method._image_modules() for p in m.parameters()]
    label = [p for m in method.head_.label_path() for p in m.parameters()]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    joint = time_steps(method, method.training_loss, image + label, joint_batches, Y, size, dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    bce = time_steps(method, method.classification_stage_loss, image, plain, Y, size, dev)
    search = _time_search(size, dev)
    where = f"{size['backbone']} {size['image_size']} px, batch {size['batch_size']}"
    return [
        {"figure": f"joint stage step ({where} anchors + {method._per_anchor()} neighbour image(s) each)",
         "value": joint, "unit": "images/s", "target": None},
        {"figure": f"classification stage step ({where})", "value": bce, "unit": "images/s", "target": None},
        {"figure": "joint / classification step time", "value": bce / joint, "unit": "x", "target": None},
        {"figure": f"peak memory, joint step ({where})", "value": peak, "unit": "GiB", "target": None},
        {"figure": f"neighbour search k=10, {size['search_n']} x {size['labels']} labels", "value": search,
         "unit": "s", "target": None},
    ]


def _retdm_module():
    return sys.modules[plugins.get("methods", "retdm").__module__]


def _time_search(size: dict, device: torch.device) -> float:
    module = _retdm_module()
    Y = torch.as_tensor(synthetic_labels(size["search_n"], size["labels"], seed=1), device=device)
    _sync(device)
    start = time.perf_counter()
    module.nearest_label_sets(Y, Y, 10)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds on a CPU")
    args = p.parse_args(argv)
    rows = measure(args.device, args.quick)
    print(f"| figure | value | unit | target |  (device {args.device}, torch {torch.__version__})")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['figure']} | {row['value']:.4g} | {row['unit']} | {row['target'] or ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
