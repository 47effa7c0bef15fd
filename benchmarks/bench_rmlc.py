"""Time RMLC's 10-fold CV at the size of the RMLC paper's MSRA set (Table II).

MSRA: 15,000 examples, 7 modalities of dimensions [256, 225, 64, 144, 75, 128, 7], 50 labels.
The values here are synthetic (Gaussian features, labels from a random linear model thresholded
to about 3 labels per example), which is all timing needs. Each fold is a real ``RMLC.fit`` and
``predict_scores`` (Algorithm 1: M optimizer steps per mini-batch of 64) on the fold's 13,500
training examples, with a fixed number of epochs (``patience=None, val_fraction=0``) so that runs
on different machines do the same work; the paper's setting stops early, so a real run takes
``best epoch + patience`` epochs per fold.

``--adam both`` (the default) times each fold twice, with PyTorch's fused Adam (what RMLC uses) and
with its default multi-tensor ("foreach") Adam, and prints the ratio.

Run from the checkout::

    python benchmarks/bench_rmlc.py                             # CPU, 1 fold x 2 epochs (a quick look)
    python benchmarks/bench_rmlc.py --device cuda --folds 10 --epochs 30 --adam fused

It prints one row per fold and optimizer and the total; the issue's target is the whole 10-fold run
in under 2 minutes on one H100.
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


def with_adam(RMLC, fused: bool):
    """RMLC with fused (its own) or PyTorch's default multi-tensor Adam."""
    if fused:
        return RMLC

    class RMLCForeachAdam(RMLC):
        def make_optimizer(self, model):
            return torch.optim.Adam(super().make_optimizer(model).param_groups[0]["params"], lr=self.lr)

    return RMLCForeachAdam


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
    parser.add_argument("--adam", choices=("fused", "foreach", "both"), default="both")
    args = parser.parse_args()

    data = msra_sized()
    splits = make_splits(data, "kfold", n_folds=10, seeds=(0,))[: args.folds]
    RMLC = plugins.get("methods", "rmlc")
    device = torch.device(args.device)
    print(f"machine: {machine(device)}; torch {torch.__version__}")
    print(f"data: {N_EXAMPLES} x {len(DIMS)} modalities {DIMS}, {N_LABELS} labels; "
          f"hidden {args.hidden}, batch 64, {args.epochs} epoch(s) per fold")
    adams = {"fused": [True], "foreach": [False], "both": [True, False]}[args.adam]
    print(f"{'fold':>4} {'adam':>8} {'train n':>8} {'fit s':>8} {'s/epoch':>8} {'predict s':>10} {'micro-F1':>9}")
    totals = {fused: 0.0 for fused in adams}
    for k, split in enumerate(splits):
        train, test = data.subset(split.train), data.subset(split.test)
        for fused in adams:
            model = with_adam(RMLC, fused)(hidden=args.hidden, epochs=args.epochs, patience=None, val_fraction=0.0,
                                           device=args.device)
            start = time.perf_counter()
            model.fit(train)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            pred = model.predict(test)
            predict_s = time.perf_counter() - start
            micro_f1 = evaluate(test.Y, model.predict_scores(test), pred)["micro_f1"]
            totals[fused] += fit_s + predict_s
            print(f"{k:>4} {'fused' if fused else 'foreach':>8} {train.n_samples:>8} {fit_s:>8.2f} "
                  f"{fit_s / args.epochs:>8.3f} {predict_s:>10.3f} {micro_f1:>9.3f}")
    for fused, total in totals.items():
        print(f"{'fused' if fused else 'foreach'} Adam: total for {len(splits)} fold(s): {total:.1f} s; "
              f"projected 10 folds: {total / len(splits) * 10:.1f} s")
    if len(totals) == 2:
        print(f"fused speed-up: {totals[False] / totals[True]:.2f}x")


if __name__ == "__main__":
    main()
