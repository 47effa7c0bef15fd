"""``nus-wide`` (images) and ``nus-wide-features`` (the six distributed low-level feature views).

Data
----
NUS-WIDE (Chua, Tang, Hong, Li, Luo & Zheng, CIVR 2009): 269,648 Flickr images, 81 concepts
labelled by hand, official lists of 161,789 training and 107,859 test images. The files, as the
dataset's site distributes them, under ``<data root>/nus-wide/``::

    ImageList/TrainImagelist.txt, TestImagelist.txt   # one image per line: actor\\0001_2124494179.jpg
    ImageList/Imagelist.txt                           # all images (needed by the "all images" files)
    Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, Labels_<concept>_Test.txt
      or Groundtruth/AllLabels/Labels_<concept>.txt   # one 0/1 per line, in the list's order
    Low_Level_Features/Train_Normalized_CH.dat, Test_Normalized_CH.dat, ... BoW_Train_int.dat, BoW_Test_int.dat
      or Low_Level_Features/Normalized_CH.dat, ..., BoW_int.dat       # rows in Imagelist.txt order
    Flickr/<folder>/<file>.jpg                        # the images (only those you have)

The 81 concepts are in the order of ``ConceptsList/Concepts81.txt`` (alphabetical; ML-GCN's order).
Both label layouts are read (``TrainTestLabels`` first); ``AllLabels`` rows are matched to the
train/test lists through ``Imagelist.txt`` (whose lines carry a ``C:\\ImageData\\Flickr\\`` prefix;
an image is identified by its folder and file name). Each feature view likewise comes either as a
train/test pair or as one all-images file.

Views
-----
* ``nus-wide``: an :class:`~bench.data.ImageView` of ``Flickr/<folder>/<file>.jpg``. Many Flickr
  originals are gone, so most users hold a subset: by default (``missing_images="drop"``) the
  images absent from disk are left out (their count is logged) and the split is the official one
  restricted to the images present; ``missing_images="error"`` requires all of them. Pixels are
  not read at load time; ``verify_images=True`` checks every file's JPEG markers.
* ``nus-wide-features``: the six views NUS-WIDE distributes, in its own order: colour histogram
  ``CH`` (64, LAB), colour correlogram ``CORR`` (144), edge direction histogram ``EDH`` (73),
  wavelet texture ``WT`` (128), block-wise colour moments ``CM55`` (225, 5x5 grid) and bag of
  SIFT visual words ``BoW`` (500), each checked for its dimension and row count.

Images without labels (Order-Free RNN's setting)
------------------------------------------------
About 60,000 images carry none of the 81 concepts. The Order-Free RNN paper (Chen et al., AAAI
2018, following WARP, Gong et al. 2013) removes "images without any label" and then uses
"150,000 images for training, and the rest for testing". Here ``drop_unlabeled=True`` (default)
removes them from both official lists; ``split="order-free-rnn"`` instead draws the paper's random
``train_size`` = 150,000 training images from the labelled ones (seed ``split_seed``; the paper's
own draw is not published), the rest being the test set. Protocol ``official``; metric columns
ML-GCN's (``coco``), which Order-Free RNN's Table 1 reports.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import check_jpeg_files
from bench.readers import read_binary_column, read_lines, read_text_matrix

log = logging.getLogger(__name__)

FOLDER = "nus-wide"
CONCEPTS = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass",
    "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime",
    "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street",
    "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toy", "train",
    "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
)
#: (view name, dimension): NUS-WIDE's six low-level features, in its own order.
FEATURE_VIEWS = (("CH", 64), ("CORR", 144), ("EDH", 73), ("WT", 128), ("CM55", 225), ("BoW", 500))
SPLITS = ("official", "order-free-rnn")
CITATION = (
    "Chua, T.-S., Tang, J., Hong, R., Li, H., Luo, Z. and Zheng, Y. (2009). NUS-WIDE: A Real-World Web "
    "Image Database from National University of Singapore. CIVR 2009. Unlabelled images handled as in "
    "Chen, Chen, Yeh & Wang, Order-Free RNN with Visual Attention for Multi-Label Classification, AAAI 2018."
)
WHERE_TO_GET = "get NUS-WIDE from https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"


def image_key(line: str) -> str:
    """``folder/file.jpg`` of an image-list line (``actor\\0001_2.jpg`` or ``C:\\...\\Flickr\\actor\\0001_2.jpg``)."""
    parts = line.strip().replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def split_feature_files(view: str) -> tuple[str, str]:
    if view == "BoW":
        return "BoW_Train_int.dat", "BoW_Test_int.dat"
    return f"Train_Normalized_{view}.dat", f"Test_Normalized_{view}.dat"


def all_feature_file(view: str) -> str:
    return "BoW_int.dat" if view == "BoW" else f"Normalized_{view}.dat"


class _NusWide(Dataset):
    """The labels and lists both NUS-WIDE datasets share (see the module docstring)."""

    protocol = "official"
    metric_set = "coco"
    citation = CITATION
    #: The view files :meth:`is_available` looks for, relative to the dataset folder.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, drop_unlabeled: bool = True, split: str = "official", train_size: int = 150_000,
                 split_seed: int = 0):
        self.drop_unlabeled = drop_unlabeled
        self.split = split
        self.train_size = train_size
        self.split_seed = split_seed

    @staticmethod
    def root(data_root: Path) -> Path:
        return Path(data_root) / FOLDER

    def is_available(self, data_root: Path) -> bool:
        root = self.root(data_root)
        lists = all((root / "ImageList" / f).is_file() for f in ("TrainImagelist.txt", "TestImagelist.txt"))
        truth = any((root / "Groundtruth" / d).is_dir() for d in ("TrainTestLabels", "AllLabels"))
        return lists and truth and all((root / p).exists() for p in self.needs)

    # ------------------------------------------------------------------ lists and labels
    def read_lists(self, root: Path) -> tuple[list[str], list[str]]:
        """Image keys of the official train and test lists."""
        where = f"image list; {WHERE_TO_GET} (ImageList.zip)"
        train = [image_key(x) for x in read_lines(root / "ImageList" / "TrainImagelist.txt", where)]
        test = [image_key(x) for x in read_lines(root / "ImageList" / "TestImagelist.txt", where)]
        return train, test

    def read_labels(self, root: Path, train: list[str], test: list[str]) -> np.ndarray:
        """Y [n_train + n_test, 81] from either ground-truth layout."""
        truth = root / "Groundtruth"
        if (truth / "TrainTestLabels").is_dir():
            folder = truth / "TrainTestLabels"
            return np.stack([
                np.concatenate([read_binary_column(folder / f"Labels_{c}_Train.txt", len(train)),
                                read_binary_column(folder / f"Labels_{c}_Test.txt", len(test))])
                for c in CONCEPTS], axis=1)
        if (truth / "AllLabels").is_dir():
            rows, n_all = self.all_image_rows(root, train + test)
            return np.stack([read_binary_column(truth / "AllLabels" / f"Labels_{c}.txt", n_all)[rows]
                             for c in CONCEPTS], axis=1)
        raise BenchError(f"{truth}: no TrainTestLabels/ or AllLabels/ ground-truth folder; {WHERE_TO_GET} "
                         "(Groundtruth.zip)")

    def all_image_rows(self, root: Path, keys: list[str]) -> tuple[np.ndarray, int]:
        """Row of each image in ``Imagelist.txt`` (the order of the all-images files), and its length."""
        path = root / "ImageList" / "Imagelist.txt"
        index = _list_index(path)
        missing = next((k for k in keys if k not in index), None)
        if missing is not None:
            raise BenchError(f"{path}: image {missing!r} of the train/test lists is not in the full image list")
        return np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys)), len(index)

    # ----------------------------------------------------------------------- selection
    def selection(self, Y: np.ndarray, n_train: int, present: np.ndarray | None = None):
        """Kept rows and the splits (indices into them), per ``drop_unlabeled`` and ``split``."""
        if self.split not in SPLITS:
            raise BenchError(f"nus-wide: split must be one of {SPLITS}, got {self.split!r}")
        keep = np.ones(len(Y), dtype=bool) if not self.drop_unlabeled else Y.any(axis=1)
        if present is not None:
            keep &= present
        kept = np.flatnonzero(keep)
        if kept.size == 0:
            raise BenchError("nus-wide: no image left after dropping unlabelled (and missing) images")
        if self.split == "official":
            is_train = kept < n_train
            return kept, {"train": np.flatnonzero(is_train), "test": np.flatnonzero(~is_train)}
        if not 0 < self.train_size < kept.size:
            raise BenchError(f"nus-wide: split 'order-free-rnn' needs train_size in (0, {kept.size}), "
                             f"got {self.train_size}")
        order = np.random.default_rng(self.split_seed).permutation(kept.size)
        return kept, {"train": np.sort(order[:self.train_size]), "test": np.sort(order[self.train_size:])}

    def _data(self, views: dict, Y: np.ndarray, splits: dict) -> MultiLabelData:
        return MultiLabelData(name=self.name, views=views, Y=Y, label_names=CONCEPTS, protocol=self.protocol,
                              splits=splits, citation=self.citation, description=self.description)


@cache
def _list_index_cached(path: str, mtime: float) -> dict[str, int]:
    return {image_key(line): row for row, line in enumerate(read_lines(Path(path), "image list"))}


def _list_index(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise BenchError(f"{path}: full image list not found (needed by the all-images label/feature "
                         f"files); {WHERE_TO_GET} (ImageList.zip)")
    return _list_index_cached(str(path), path.stat().st_mtime)


class NusWideImages(_NusWide):
    """NUS-WIDE images (``Flickr/<folder>/<file>.jpg``), 81 concepts, official lists.

    Args (beyond :class:`_NusWide`'s ``drop_unlabeled``, ``split``, ``train_size``, ``split_seed``):
        missing_images: ``"drop"`` leaves out listed images absent from disk; ``"error"`` requires all.
        verify_images: check each image file's JPEG start and end markers at load time.
    """

    name = "nus-wide"
    needs = ("Flickr",)
    description = ("NUS-WIDE images: 81 concepts, official train/test lists restricted to labelled images "
                   "present under Flickr/ (Order-Free RNN drops unlabelled images)")

    def __init__(self, drop_unlabeled: bool = True, split: str = "official", train_size: int = 150_000,
                 split_seed: int = 0, missing_images: str = "drop", verify_images: bool = False):
        super().__init__(drop_unlabeled, split, train_size, split_seed)
        self.missing_images = missing_images
        self.verify_images = verify_images

    def load(self, data_root: Path) -> MultiLabelData:
        root = self.root(data_root)
        train, test = self.read_lists(root)
        Y = self.read_labels(root, train, test)
        keys = train + test
        present = _present(root / "Flickr", keys)
        if self.missing_images not in ("drop", "error"):
            raise BenchError(f"nus-wide: missing_images must be 'drop' or 'error', got {self.missing_images!r}")
        if not present.all():
            first = root / "Flickr" / keys[int(np.flatnonzero(~present)[0])]
            if self.missing_images == "error" or not present.any():
                raise BenchError(f"{first}: image listed in ImageList/ is missing ({int((~present).sum())} of "
                                 f"{len(keys)} missing); {WHERE_TO_GET}")
            log.warning("nus-wide: %d of %d listed images are not under %s; left out", int((~present).sum()),
                        len(keys), root / "Flickr")
        kept, splits = self.selection(Y, len(train), present)
        paths = tuple(root / "Flickr" / keys[i] for i in kept)
        if self.verify_images:
            check_jpeg_files(paths)
        return self._data({"image": ImageView(paths=paths)}, Y[kept], splits)


def _present(folder: Path, keys: list[str]) -> np.ndarray:
    """Whether each ``folder/<sub>/<file>`` exists (one directory listing per sub-folder)."""
    if not folder.is_dir():
        raise BenchError(f"{folder}: image folder not found; {WHERE_TO_GET}")
    listings: dict[str, set[str]] = {}
    present = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        sub, _, file = key.rpartition("/")
        if sub not in listings:
            try:
                listings[sub] = set(os.listdir(folder / sub))
            except (FileNotFoundError, NotADirectoryError):
                listings[sub] = set()
        present[i] = file in listings[sub]
    return present


class NusWideFeatures(_NusWide):
    """NUS-WIDE's six low-level feature views (CH, CORR, EDH, WT, CM55, BoW), 81 concepts."""

    name = "nus-wide-features"
    needs = ("Low_Level_Features",)
    description = ("NUS-WIDE low-level features: 6 views (CH 64, CORR 144, EDH 73, WT 128, CM55 225, "
                   "BoW 500), 81 concepts, official lists, unlabelled images dropped")

    def load(self, data_root: Path) -> MultiLabelData:
        root = self.root(data_root)
        train, test = self.read_lists(root)
        Y = self.read_labels(root, train, test)
        kept, splits = self.selection(Y, len(train))
        views = {view: self.read_view(root, view, dim, train, test)[kept] for view, dim in FEATURE_VIEWS}
        return self._data(views, Y[kept], splits)

    def read_view(self, root: Path, view: str, dim: int, train: list[str], test: list[str]) -> np.ndarray:
        """One view [n_train + n_test, dim], from its train/test pair or its all-images file."""
        folder = root / "Low_Level_Features"
        train_file, test_file = (folder / f for f in split_feature_files(view))
        if train_file.is_file() or test_file.is_file():
            return np.concatenate([
                read_text_matrix(train_file, n_cols=dim, n_rows=len(train), what=f"{view} feature"),
                read_text_matrix(test_file, n_cols=dim, n_rows=len(test), what=f"{view} feature")])
        all_file = folder / all_feature_file(view)
        if not all_file.is_file():
            raise BenchError(f"{folder}: no {view} features ({train_file.name} + {test_file.name}, or "
                             f"{all_file.name}); {WHERE_TO_GET} (Low-Level Features)")
        rows, n_all = self.all_image_rows(root, train + test)
        return read_text_matrix(all_file, n_cols=dim, n_rows=n_all, what=f"{view} feature")[rows]
