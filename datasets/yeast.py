"""``yeast``: the MULAN yeast gene-function benchmark, as shipped inside the ``river`` wheel.

Data
----
2,417 yeast (*Saccharomyces cerevisiae*) genes, each described by 103 real-valued features
(``Att1`` .. ``Att103``) and annotated with a subset of 14 functional categories (``Class1`` ..
``Class14``; 4.24 labels per gene on average). This is the canonical multi-label version from the
MULAN library (Elisseeff & Weston 2001; Tsoumakas et al. 2011); river's docstring says it matches
OpenML dataset 40597. Papers evaluate it with k-fold cross-validation (protocol ``"kfold"``).

Source
------
``river.datasets.Yeast().path``, a gzipped CSV in river's site-packages (header
``Att1,...,Att103,Class1,...,Class14``; one row per gene, labels written as 0/1). It is read with
pandas, which takes milliseconds where iterating river's stream (``iter_csv`` with per-field
converters) takes about a second; a test checks both give identical arrays. Features are float32,
labels uint8, label names are the CSV's column names.

Why a single view
-----------------
Elisseeff & Weston describe each gene by "micro-array expression data and phylogenetic profiles",
so two views (expression vs phylogenetic profile) would be natural. We keep ONE view,
``features``, because no source we could check documents which of the 103 columns is which: the
names ``Att1..Att103`` carry no provenance, the CSV header and river's docstring say nothing about
it, and the paper and MULAN give only the total (103). The data merely hint at a boundary: the
first 79 columns are near-symmetric (mean skewness 0.03) with correlated runs of neighbouring
columns, consistent with the 79 conditions of the Eisen et al. (1998) expression data; columns
80..102 are all right-skewed (skewness 0.98-1.85, against one column above 0.9 among the first
79) and nearly uncorrelated with each other, as
phylogenetic-profile columns might be, and 79 + 24 = 103; but Att103 does not fit that pattern
(skewness -0.34) and an unsupervised segmentation of the correlation matrix does not put a
boundary at 79/80. A split inferred from such statistics is a guess, not provenance, so it is not
imposed on the methods. (Each row of the published file is L2-normalised to unit norm.)
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from bench.api import Dataset
from bench.data import MultiLabelData
from bench.errors import BenchError

N_SAMPLES, N_FEATURES, N_LABELS = 2417, 103, 14


def csv_path() -> Path:
    """The yeast CSV that river ships (no download)."""
    from river.datasets import Yeast

    return Path(Yeast().path)


@functools.cache
def read_yeast() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features float32 [2417, 103], labels uint8 [2417, 14] and the label names."""
    import pandas as pd

    table = pd.read_csv(csv_path())
    features = [c for c in table.columns if c.startswith("Att")]
    labels = [c for c in table.columns if c.startswith("Class")]
    if table.shape != (N_SAMPLES, N_FEATURES + N_LABELS) or len(features) != N_FEATURES:
        raise BenchError(
            f"dataset 'yeast': unexpected table {table.shape} with {len(features)} feature and "
            f"{len(labels)} label columns in {csv_path()}"
        )
    X = table[features].to_numpy(dtype=np.float32)
    Y = table[labels].to_numpy(dtype=np.uint8)
    return X, Y, tuple(labels)


class Yeast(Dataset):
    """MULAN yeast: 2,417 genes x 103 features, 14 functional classes (see the module docstring)."""

    name = "yeast"
    protocol = "kfold"
    embedded = True
    citation = (
        "Elisseeff, A. and Weston, J. (2001). A kernel method for multi-labelled classification. "
        "Advances in Neural Information Processing Systems 14 (NIPS 2001), 681-687. | Tsoumakas, G., "
        "Spyromitros-Xioufis, E., Vilcek, J. and Vlahavas, I. (2011). MULAN: A Java library for "
        "multi-label learning. Journal of Machine Learning Research 12, 2411-2414."
    )
    description = (
        "yeast (MULAN; OpenML 40597): 2,417 yeast genes, 103 features (micro-array expression and "
        "phylogenetic profiles, Att1..Att103), 14 functional classes (Class1..Class14), read from "
        "the CSV shipped in the river wheel. One view 'features': no documented column boundary "
        "between the expression and phylogenetic-profile features."
    )

    def load(self, data_root: Path) -> MultiLabelData:
        X, Y, label_names = read_yeast()
        # Copies, so that a method writing into its arrays cannot corrupt the in-process cache.
        return MultiLabelData(
            name=self.name,
            views={"features": X.copy()},
            Y=Y.copy(),
            label_names=label_names,
            protocol=self.protocol,
            citation=self.citation,
            description=self.description,
        )
