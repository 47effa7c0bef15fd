"""The multi-modal multi-label feature sets of the RMLC paper: ``ml2000``, ``msrc``, ``taobao``,
``fcvid``, ``msra`` (Table II), read from the MATLAB files in which such sets are distributed.

Data
----
RMLC (rmlc.txt, Section IV-A and Table II) evaluates on five sets collected by the Nanjing
University group (MCC, arXiv 1907.11857; DMP, ACML 2017; CS3G, ICDM 2016). No public copy was
found (NOTES.md), so the user provides each as one MATLAB file
``<data root>/multimodal/<NAME>.mat`` (``ML2000.mat``, ``MSRC.mat``, ``Taobao.mat``,
``FCVID.mat``, ``MSRA.mat``; the name's case does not matter) holding

* the views, either as a cell array (``X{m}``, one matrix per modality, in modality order) or as
  numbered variables (``X1``, ``X2``, ...; any common prefix), and
* a label matrix named ``Y``, ``label(s)``, ``target(s)`` or ``gt``, coded {0,1} or {-1,1},

each matrix stored [N, d] or [d, N] (MATLAB v4-v7 through scipy, v7.3/HDF5 through h5py; see
:mod:`bench.readers`, which detects the layout, orientation and coding and names the file and the
variable in every error). ``views_key`` and ``labels_key`` name the variables when detection is
not wanted.

Table II check
--------------
The loaded set must match Table II: N examples, M modalities, L labels and the multiset of view
dimensions; a mismatch is a one-line error naming the file and the expected and found values.
When the file holds the modalities in another order than Table II and the dimensions tell them
apart, the views are put in Table II's order (RMLC reads modalities in that order); FCVID's five
400-d views cannot be told apart and keep the file's order. The modalities Table II describes:

* ML2000 (the 2,000-image natural-scene set: desert, mountains, sea, sunset, trees) and MSRC:
  BoW 500, FV 1040, HOG 576;
* Taobao: BoW 500, Gabor 48, HOG 81 and a fourth 24-d feature (its name is lost in the text);
* FCVID: HOF, HOG, CNN, Trajectory, SIFT, 400 each;
* MSRA: RGB colour histogram 256, block-wise colour moments 225, HSV colour histogram 64, colour
  correlogram 144, distribution histogram 75, wavelet texture 128, face 7.

Views are named ``view1`` ... ``viewM`` (the files carry no modality names). Protocol: 10-fold
cross-validation (RMLC, Section IV-B); metric columns: RMLC's Tables III-IV (``multimodal``).
:class:`MatMultiModal` (``mat-views``) reads any file of this form from
``<data root>/multimodal/<file>.mat`` without a Table II check: subclass it with ``name`` and
``file_name`` for a set of your own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from bench.api import Dataset
from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.readers import mat_views_and_labels, read_mat

log = logging.getLogger(__name__)

FOLDER = "multimodal"
RMLC_CITATION = (
    "Zhang, Shen, Zhang, Zhang & Wang, Rethinking Modal-oriented Label Correlations for Multi-modal "
    "Multi-label Learning (RMLC), Table II; sets of the Nanjing University group's papers (CS3G, ICDM "
    "2016; DMP, ACML 2017; MCC, arXiv 1907.11857)."
)
WHERE_TO_GET = "these sets are not public; ask their authors (docs/datasets.md, 'Datasets on disk')"


class MatMultiModal(Dataset):
    """Views + labels from one MATLAB file ``<data root>/multimodal/<file_name>``.

    Args:
        views_key: the cell array (or the prefix of numbered variables) holding the views;
            None detects it.
        labels_key: the label matrix's variable; None detects it (``Y``, ``labels``, ``target``...).
    """

    name = "mat-views"
    file_name: ClassVar[str] = "views.mat"
    protocol = "kfold"
    metric_set = "multimodal"
    description = "your own multi-view set: <data root>/multimodal/views.mat (cell array or X1, X2, ... + Y)"

    def __init__(self, views_key: str | None = None, labels_key: str | None = None):
        self.views_key = views_key
        self.labels_key = labels_key

    def path(self, data_root: Path) -> Path:
        """The file, matched case-insensitively (``ML2000.mat``, ``ml2000.mat``)."""
        folder = Path(data_root) / FOLDER
        exact = folder / self.file_name
        if exact.is_file() or not folder.is_dir():
            return exact
        matches = [p for p in folder.iterdir() if p.name.lower() == self.file_name.lower()]
        return matches[0] if matches else exact

    def is_available(self, data_root: Path) -> bool:
        return self.path(data_root).is_file()

    def read(self, data_root: Path, n_samples: int | None = None):
        path = self.path(data_root)
        if not path.is_file():
            raise BenchError(f"{path}: MATLAB file not found; {WHERE_TO_GET}")
        views, Y, note = mat_views_and_labels(read_mat(path), path, views_key=self.views_key,
                                              labels_key=self.labels_key, n_samples=n_samples)
        log.info("%s: %s", path, note)
        return path, views, Y

    def load(self, data_root: Path) -> MultiLabelData:
        _, views, Y = self.read(data_root)
        return self._data(views, Y)

    def _data(self, views, Y) -> MultiLabelData:
        return MultiLabelData(
            name=self.name, views={f"view{m + 1}": v for m, v in enumerate(views)}, Y=Y,
            label_names=tuple(f"label{j + 1}" for j in range(Y.shape[1])), protocol=self.protocol,
            citation=self.citation, description=self.description,
        )


class _TableII(MatMultiModal):
    """One of RMLC's five sets: read like :class:`MatMultiModal`, then checked against Table II."""

    citation = RMLC_CITATION
    #: Table II: N, L and the view dimensions d_m in the paper's modality order (M = their count).
    n: ClassVar[int] = 0
    n_labels: ClassVar[int] = 0
    dims: ClassVar[tuple[int, ...]] = ()

    def load(self, data_root: Path) -> MultiLabelData:
        path, views, Y = self.read(data_root, n_samples=self.n)
        self.check_table_ii(path, views, Y)
        return self._data(table_ii_order(views, self.dims), Y)

    def check_table_ii(self, path: Path, views, Y) -> None:
        found_dims = [v.shape[1] for v in views]
        expected = f"Table II of RMLC: N={self.n}, M={len(self.dims)}, L={self.n_labels}, d={list(self.dims)}"
        if len(views) != len(self.dims):
            raise BenchError(f"{path}: {len(views)} views (dims {found_dims}); expected {expected}")
        if Y.shape[1] != self.n_labels:
            raise BenchError(f"{path}: {Y.shape[1]} labels; expected {expected}")
        if sorted(found_dims) != sorted(self.dims):
            raise BenchError(f"{path}: view dimensions {found_dims}; expected {expected}")


def table_ii_order(views, dims: tuple[int, ...]):
    """The views in Table II's modality order when their dimensions identify them, else as given."""
    found = [v.shape[1] for v in views]
    if found == list(dims) or len(set(dims)) != len(dims):
        return views
    log.info("views reordered from dims %s to Table II's order %s", found, list(dims))
    by_dim = {v.shape[1]: v for v in views}
    return [by_dim[d] for d in dims]


class ML2000(_TableII):
    name = "ml2000"
    file_name = "ML2000.mat"
    n, n_labels, dims = 2000, 5, (500, 1040, 576)
    description = "ML2000 (RMLC Table II): 2,000 scene images, 5 labels, views BoW 500, FV 1040, HOG 576"


class MSRC(_TableII):
    name = "msrc"
    file_name = "MSRC.mat"
    n, n_labels, dims = 591, 24, (500, 1040, 576)
    description = "MSRC (RMLC Table II): 591 images, 24 labels, views BoW 500, FV 1040, HOG 576"


class Taobao(_TableII):
    name = "taobao"
    file_name = "Taobao.mat"
    n, n_labels, dims = 2079, 30, (500, 48, 81, 24)
    description = "Taobao (RMLC Table II): 2,079 shopping items, 30 labels, 4 views (500, 48, 81, 24)"


class FCVID(_TableII):
    name = "fcvid"
    file_name = "FCVID.mat"
    n, n_labels, dims = 4388, 28, (400, 400, 400, 400, 400)
    description = "FCVID subset (RMLC Table II): 4,388 videos, 28 labels, 5 views of 400 (HOF, HOG, CNN, Traj., SIFT)"


class MSRA(_TableII):
    name = "msra"
    file_name = "MSRA.mat"
    n, n_labels, dims = 15000, 50, (256, 225, 64, 144, 75, 128, 7)
    description = "MSRA subset (RMLC Table II): 15,000 images, 50 labels, 7 views (256, 225, 64, 144, 75, 128, 7)"
