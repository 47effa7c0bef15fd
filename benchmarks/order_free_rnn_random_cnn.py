"""Why Order-Free RNN learnt little over a frozen *random* CNN: the size of its features.

On ``mnist-mosaic`` Order-Free RNN once ran over the dataset's ``small-cnn`` kept frozen at its
random initialisation (mAP 0.335 for every row; docs/methods.md, "Order-Free RNN"). This prints, for that
CNN seeded as the method seeds it (``seed_all(random_state=0)`` before building it), the mean
absolute value of its mean-pooled maps and their spread across images, and the test mAP a
one-vs-rest logistic regression (scikit-learn) reaches on the same pooled maps once standardised,
on fold 1 of the 2-fold split ``bench run --folds 2`` uses. Seconds on one CPU core::

    python benchmarks/order_free_rnn_random_cnn.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from bench import runner
from bench.backbones import build_backbone
from bench.image import to_model_input
from bench.protocols import make_splits
from bench.training import seed_all


def main() -> int:
    torch.set_num_threads(1)
    data = runner.load_dataset("mnist-mosaic", "unused")
    seed_all(0)
    cnn = build_backbone("small-cnn", False).eval()
    images = torch.from_numpy(data.image_view.array).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        pooled = torch.cat([cnn(to_model_input(images[i:i + 250], cnn.mean, cnn.std, torch.device("cpu")))
                            .mean(dim=(2, 3)) for i in range(0, len(images), 250)]).numpy()
    split = make_splits(data, "kfold", 2, (0,))[0]
    scaler = StandardScaler().fit(pooled[split.train])
    model = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(scaler.transform(pooled[split.train]),
                                                                      data.Y[split.train])
    scores = model.predict_proba(scaler.transform(pooled[split.test]))
    print(f"random small-cnn, mean-pooled maps of {len(pooled)} images x {pooled.shape[1]} channels:")
    print(f"  mean |value| {np.abs(pooled).mean():.4f}; per-channel std across images {pooled.std(axis=0).mean():.4f}")
    print(f"  logistic regression on them standardised, fold 1 of 2: test mAP "
          f"{average_precision_score(data.Y[split.test], scores, average='macro'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
