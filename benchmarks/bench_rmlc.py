"""Time RMLC's 10-fold CV at the size of the RMLC paper's MSRA set (Table II).

MSRA: 15,000 examples, 7 modalities of dimensions [256, 225, 64, 144, 75, 128, 7], 50 labels.
The values here are synthetic (Gaussian features, labels from a random linear model thresholded
to about 3 labels per example), which is all timing needs. Each fold is a real ``RMLC.fit`` and
``predict_scores`` (Algorithm 1: M optimizer steps per mini-batch of 64) on the fold's 13,500
training examples, with a fixed number of epochs (``early_stopping=False``) so that runs on
different machines do the same work; the paper's setting stops early, so a real run takes
``best epoch + patience`` epochs per fold.

Run from the checkout::

    python benchmarks/bench_rmlc.py                             # CPU, 1 fold x 2 epochs (a quick look)
    python benchmarks/bench_rmlc.py --device cuda --folds 10 --epochs 30

It prints one row per fold and the total; the issue's target is the whole 10-fold run in under
2 minutes on one H100.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from bench import plugins
from bench.data import MultiLabelData
from bench.metrics import evaluate
from bench.protocols import make_splits

DIMS = [256, 225, 64, 144, 75, 128, 7]
N_EXAMPLES, N_LABELS, LABELS_PER_EXAMPLE = 15_000, 50, 3.0


def msra_sized(seed: int = 0) -> MultiLabelData:
    rng = np.random.default_rng(seed)
    views = {f"m{t}": rng.normal(size=(N_EXAMPLES, d)).astype(np.float32) for t, d in enumerate(DIMS)}
    x = np.concatenate(list(views.values()), axis=1)
    logits = x @ rng.normal(size=(x.shape[1], N_LABELS)) / np.sqrt(x.shape[1])
    logits += rng.normal(scale=0.5, size=logits.shape)
    cut = np.quantile(logits, 1 - LABELS_PER_EXAMPLE / N_LABELS)
    Y = (logits > cut).astype(np.uint8)
    return MultiLabelData("msra-sized", views, Y, tuple(f"l{k}" for k in range(N_LABELS)))


def machine(device: torch.device) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({cpu})"
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folds", type=int, default=1, help="how many of the 10 folds to run")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fold (fixed; no early stopping)")
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    data = msra_sized()
    splits = make_splits(data, "kfold", n_folds=10, seeds=(0,))[: args.folds]
    RMLC = plugins.get("methods", "rmlc")
    device = torch.device(args.device)
    print(f"machine: {machine(device)}; torch {torch.__version__}")
    print(f"data: {N_EXAMPLES} x {len(DIMS)} modalities {DIMS}, {N_LABELS} labels; "
          f"hidden {args.hidden}, batch 64, {args.epochs} epoch(s) per fold")
    print(f"{'fold':>4} {'train n':>8} {'fit s':>8} {'s/epoch':>8} {'predict s':>10} {'micro-F1':>9}")
    total = 0.0
    for k, split in enumerate(splits):
        train, test = data.subset(split.train), data.subset(split.test)
        model = RMLC(hidden=args.hidden, max_epochs=args.epochs, early_stopping=False, device=args.device)
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = model.predict(test)
        predict_s = time.perf_counter() - start
        micro_f1 = evaluate(test.Y, model.predict_scores(test), pred)["micro_f1"]
        total += fit_s + predict_s
        print(f"{k:>4} {train.n_samples:>8} {fit_s:>8.2f} {fit_s / args.epochs:>8.3f} {predict_s:>10.3f} {micro_f1:>9.3f}")
    print(f"total for {len(splits)} fold(s): {total:.1f} s; projected 10 folds: {total / len(splits) * 10:.1f} s")


if __name__ == "__main__":
    main()
