"""Choose RMLC's early-stopping criterion on validation data only (a nested split), and print the sweep.

RMLC's paper leaves early stopping open. A criterion must not be chosen by reading the test folds
it is then reported on, so every number here comes from inside the *training parts* of the 10 folds
(seed 0) of each dataset:

1. each outer training part T is split (stratified, ``validation_split``, seed = fold) into a
   *selection part* (20 % of T) and the rest R;
2. RMLC is fitted on R exactly as ``RMLC.fit`` does by default (its own stratified 10 % validation
   part carved out of R, standardisation on the other 90 %), but for a fixed ``--epochs`` epochs
   without stopping, recording every epoch's validation metrics (``history_``) and the selection
   part's metrics (an epoch callback);
3. for each candidate criterion, early stopping with ``patience`` 10 is replayed on the recorded
   validation curve (:class:`bench.torch_utils.EarlyStopping`, as in training): the epoch it keeps;
4. that epoch's selection-part metrics are the criterion's score on this fold.

The rule, fixed before the sweep was run: for each dataset and each metric of RMLC's tables
(``METRIC_SETS["multimodal"]``), rank the candidates by their mean selection-part score over the
10 folds; the criterion with the lowest average rank over all (dataset, metric) pairs wins; ties go
to ``val_loss``. The outer test folds are never read. ``bench run`` then reports RMLC with the
winning criterion as its default (docs/methods.md, "RMLC").

Run from the checkout (one torch thread per process; each dataset takes minutes)::

    python benchmarks/rmlc_early_stopping.py --dataset mnist-mosaic --dataset yeast

or one process per dataset (``--save mosaic.json`` ...), then ``--load mosaic.json --load yeast.json``
for the joint ranking.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench import plugins, runner
from bench.metrics import METRIC_SETS, evaluate
from bench.protocols import make_splits, validation_split
from bench.torch_utils import EarlyStopping
from bench.training import higher_is_better

CANDIDATES = ("val_loss", "val_mAP", *(f"val_{m}" for m in METRIC_SETS["multimodal"]))
TABLE_METRICS = METRIC_SETS["multimodal"]
PATIENCE = 10
SELECTION_FRACTION = 0.2


def sweep_fold(RMLC, train_part, fold: int, epochs: int) -> dict:
    """One outer training part: per-epoch validation records and selection-part metrics."""
    rest, selection = validation_split(train_part, SELECTION_FRACTION, seed=fold)
    selection_scores: list[dict] = []

    class Recording(RMLC):
        def epoch_callbacks(self):
            def score(record):
                scores = self.predict_scores(selection)
                selection_scores.append(dict(evaluate(selection.Y, scores, (scores >= 0.5).astype(np.uint8))))
            return [score]

    start = time.perf_counter()
    method = Recording(epochs=epochs, patience=None, device="cpu").fit(rest)
    return {"history": method.history_, "selection": selection_scores, "fit_s": time.perf_counter() - start,
            "n_rest": rest.n_samples, "n_selection": selection.n_samples}


class _Weights(torch.nn.Module):
    """A stand-in model for EarlyStopping's snapshots (only the kept epoch matters here)."""


def kept_epoch(history: list[dict], criterion: str) -> tuple[int, bool]:
    """The epoch (1-based) early stopping with PATIENCE keeps on ``criterion``, and whether the
    recorded curve was long enough for the stop to happen."""
    stopper = EarlyStopping(patience=PATIENCE)
    sign = 1.0 if higher_is_better(criterion) else -1.0
    for record in history:
        score = sign * record[criterion]
        if stopper.step(score if math.isfinite(score) else -math.inf, record["epoch"], _Weights()):
            break
    if stopper.best_epoch < 1:
        raise SystemExit(f"{criterion} was never finite on a recorded curve")
    return stopper.best_epoch, stopper.best_epoch + PATIENCE <= history[-1]["epoch"]


def summarise(results: dict[str, list[dict]]) -> tuple[str, dict]:
    """Per dataset: mean selection score of each criterion per table metric; ranks; the winner."""
    rows = {}
    ranks: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    for dataset, folds in results.items():
        for criterion in CANDIDATES:
            kept = [kept_epoch(f["history"], criterion) for f in folds]
            scores = {m: float(np.mean([f["selection"][e - 1][m] for f, (e, _) in zip(folds, kept, strict=True)]))
                      for m in TABLE_METRICS}
            rows[(dataset, criterion)] = {"epochs": [e for e, _ in kept], "stopped": sum(s for _, s in kept),
                                          **scores}
        for m in TABLE_METRICS:
            values = np.array([rows[(dataset, c)][m] for c in CANDIDATES])
            order = -values if higher_is_better(m) else values
            # average ranks for ties (1 = best)
            ranked = np.argsort(np.argsort(order, kind="stable"), kind="stable").astype(float) + 1
            for value in np.unique(order):
                ranked[order == value] = ranked[order == value].mean()
            for c, r in zip(CANDIDATES, ranked, strict=True):
                ranks[c].append(float(r))
    mean_rank = {c: float(np.mean(r)) for c, r in ranks.items()}
    best = min(CANDIDATES, key=lambda c: (mean_rank[c], c != "val_loss"))
    return best, {"rows": rows, "mean_rank": mean_rank}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--folds", type=int, default=10, help="how many of the 10 outer folds")
    parser.add_argument("--save", type=Path, default=None, help="write the raw sweep as JSON here")
    parser.add_argument("--load", type=Path, action="append", default=[],
                        help="summarise sweeps saved with --save (e.g. one process per dataset) instead of running")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, "
          f"load average {os.getloadavg()[0]:.1f} at start; torch {torch.__version__}")
    results: dict[str, list[dict]] = {}
    for path in args.load:
        results.update(json.loads(path.read_text()))
    datasets = list(results) if args.load else (args.dataset or ["mnist-mosaic", "yeast"])
    RMLC = plugins.get("methods", "rmlc")
    for name in [] if args.load else datasets:
        data = runner.load_dataset(name, str(Path("data")))
        splits = make_splits(data, "kfold", 10, (0,))[: args.folds]
        results[name] = []
        for split in splits:
            fold = sweep_fold(RMLC, data.subset(split.train), split.fold, args.epochs)
            results[name].append(fold)
            print(f"{name} fold {split.fold}: fit on {fold['n_rest']} (selection {fold['n_selection']}), "
                  f"{args.epochs} epochs in {fold['fit_s']:.0f} s", flush=True)
    if args.save:
        args.save.write_text(json.dumps(results))
    best, summary = summarise(results)
    header = f"{'criterion':<24}" + "".join(f"{d[:14]:>16}" for d in datasets) + f"{'mean rank':>11}"
    print(f"\nselection-part ranking loss / micro-F1 (mean over folds) at the epoch each criterion keeps "
          f"(patience {PATIENCE}; epochs kept: median)\n{header}")
    for criterion in CANDIDATES:
        cells = []
        for d in datasets:
            row = summary["rows"][(d, criterion)]
            cells.append(f"{row['ranking_loss']:.3f}/{row['micro_f1']:.3f} e{int(np.median(row['epochs'])):<3}")
        print(f"{criterion:<24}" + "".join(f"{c:>16}" for c in cells) + f"{summary['mean_rank'][criterion]:>11.2f}")
    for d in datasets:
        print(f"\n{d}: every table metric on the selection parts (mean over folds)\n{'criterion':<24}"
              + "".join(f"{m[:14]:>15}" for m in TABLE_METRICS))
        for c in CANDIDATES:
            print(f"{c:<24}" + "".join(f"{summary['rows'][(d, c)][m]:>15.4f}" for m in TABLE_METRICS))
    short = {d: sum(summary["rows"][(d, c)]["stopped"] < len(results[d]) for c in CANDIDATES) for d in datasets}
    print(f"\ncurves too short for the stop to happen (criterion x dataset with a fold that never stopped): {short}")
    print(f"chosen criterion (lowest mean rank over {len(datasets)} dataset(s) x {len(TABLE_METRICS)} metrics): "
          f"{best}; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
