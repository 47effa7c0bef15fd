"""Readers for bring-your-own data: an image folder with a labels CSV, or multi-view features.

The plug-in ``datasets/custom.py`` registers ``custom-images`` and ``custom-views`` (fixed folders
under the data root); subclass :class:`ImageFolderCSV` or :class:`MultiViewFiles` in a plug-in
file of your own, setting ``name`` (and ``folder``, default: the name), to register more (README,
"Bring your own data"). The classes live here, in the installed core, so that any plug-in file
can import them.

:class:`ImageFolderCSV`: ``<data root>/<folder>/``
    ``labels.csv``: a header row, then one row per image: column ``image`` (a path relative to
    ``images/``), an optional column ``split`` (``train`` / ``test``: the official split), and one
    0/1 column per label (the header gives the label names, in order).
    ``images/``: the image files (any format the image pipeline decodes; not read at load time).

:class:`MultiViewFiles`: ``<data root>/<folder>/``, either
    ``views.npz``: ``Y`` ([N, L] 0/1); each other array [N, d_m] is a feature view, in the order
    it was saved (``np.savez(f, Y=Y, audio=A, video=V)``; the order matters to RMLC); optional
    ``label_names`` ([L] strings), ``train_idx`` and ``test_idx`` (an official split); or
    ``labels.csv`` (header of label names, one 0/1 row per example, an optional ``split`` column)
    and ``views/<name>.csv`` (a header row, then N numeric rows; views in file-name order, so
    prefix them ``1_``, ``2_`` ... to choose it).

With a split the protocol is ``official``, otherwise 10-fold cross-validation (``kfold``). Every
malformed input is a one-line error naming the file: a missing file, a label that is not 0/1, a
view whose row count differs from the labels', a non-numeric value, a missing image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError

SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")


def read_csv(path: Path):
    import pandas as pd

    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: malformed CSV ({str(exc).strip().splitlines()[0]})") from None


def binary_labels(values, path: Path, label_names) -> np.ndarray:
    """A 0/1 label matrix, or an error naming the file, the column and the bad value."""
    Y = np.asarray(values)
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise BenchError(f"{path}: labels must be a 2-D [N, L] matrix with L >= 1, got shape {Y.shape}")
    numeric = np.issubdtype(Y.dtype, np.number) or Y.dtype == bool
    bad = ~np.isin(Y, (0, 1)) if numeric else np.ones(Y.shape, dtype=bool)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BenchError(f"{path}: label {label_names[c]!r} of row {r} is {Y[r, c]!r}; labels must be 0 or 1")
    return Y.astype(np.uint8)


def split_indices(column, path: Path) -> dict[str, np.ndarray]:
    values = np.asarray(column, dtype=str)
    unknown = sorted(set(values) - set(SPLIT_VALUES))
    if unknown:
        raise BenchError(f"{path}: column {SPLIT_COLUMN!r} must be 'train' or 'test', found {unknown[:3]}")
    return {s: np.flatnonzero(values == s) for s in SPLIT_VALUES}


def numeric_view(values, path: Path) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise BenchError(f"{path}: a feature view must be 2-D [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise BenchError(f"{path}: a feature view must be numeric, got dtype {array.dtype}")
    return array.astype(np.float32)


class ImageFolderCSV(Dataset):
    """Images in ``<data root>/<folder>/images/`` with labels in ``<folder>/labels.csv``."""

    folder: ClassVar[str] = ""
    description = "your images: <data root>/<folder>/images/ and labels.csv (image, [split], one 0/1 column per label)"

    def root(self, data_root: Path) -> Path:
        return Path(data_root) / (self.folder or self.name)

    def is_available(self, data_root: Path) -> bool:
        return (self.root(data_root) / "labels.csv").is_file()

    def load(self, data_root: Path) -> MultiLabelData:
        root = self.root(data_root)
        path = root / "labels.csv"
        table = read_csv(path)
        if "image" not in table.columns:
            raise BenchError(f"{path}: expected a column 'image' (paths relative to {root / 'images'})")
        label_names = [c for c in table.columns if c not in ("image", SPLIT_COLUMN)]
        Y = binary_labels(table[label_names].to_numpy(), path, label_names)
        paths = self.image_paths(root / "images", table["image"].astype(str).tolist(), path)
        splits = split_indices(table[SPLIT_COLUMN], path) if SPLIT_COLUMN in table.columns else {}
        return MultiLabelData(
            name=self.name, views={"image": ImageView(paths=paths)}, Y=Y, label_names=label_names,
            protocol="official" if splits else self.protocol, splits=splits,
            citation=self.citation, description=self.description,
        )

    @staticmethod
    def image_paths(folder: Path, names: list[str], listed_in: Path) -> tuple[Path, ...]:
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise BenchError(f"{listed_in}: image {duplicate!r} is listed more than once")
        listings: dict[Path, set[str]] = {}
        paths = []
        for name in names:
            path = folder / name
            if path.parent not in listings:  # one listing per folder, not one stat per image
                listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
            if path.name not in listings[path.parent]:
                raise BenchError(f"{path}: image listed in {listed_in} is missing")
            paths.append(path)
        return tuple(paths)


class MultiViewFiles(Dataset):
    """Feature views and labels in ``<data root>/<folder>/``: ``views.npz``, or CSV files."""

    folder: ClassVar[str] = ""
    description = "your features: <data root>/<folder>/views.npz (Y + one array per view) or labels.csv + views/*.csv"

    def root(self, data_root: Path) -> Path:
        return Path(data_root) / (self.folder or self.name)

    def is_available(self, data_root: Path) -> bool:
        root = self.root(data_root)
        return (root / "views.npz").is_file() or (root / "labels.csv").is_file()

    def load(self, data_root: Path) -> MultiLabelData:
        root = self.root(data_root)
        if (root / "views.npz").is_file():
            views, Y, label_names, splits = self.read_npz(root / "views.npz")
        else:
            views, Y, label_names, splits = self.read_csvs(root)
        return MultiLabelData(
            name=self.name, views=views, Y=Y, label_names=label_names,
            protocol="official" if splits else self.protocol, splits=splits,
            citation=self.citation, description=self.description,
        )

    @staticmethod
    def read_npz(path: Path):
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BenchError(f"{path}: not a readable .npz file ({exc})") from None
        if "Y" not in arrays:
            raise BenchError(f"{path}: no label array 'Y' (found {sorted(arrays)})")
        Y = arrays.pop("Y")
        names = arrays.pop("label_names", None)
        label_names = [str(n) for n in names] if names is not None else [f"label{j}" for j in range(Y.shape[-1])]
        Y = binary_labels(Y, path, label_names)
        if len(label_names) != Y.shape[1]:
            raise BenchError(f"{path}: {len(label_names)} label_names for {Y.shape[1]} label columns")
        splits = {}
        if ("train_idx" in arrays) != ("test_idx" in arrays):
            raise BenchError(f"{path}: give both 'train_idx' and 'test_idx', or neither")
        if "train_idx" in arrays:
            splits = {"train": arrays.pop("train_idx"), "test": arrays.pop("test_idx")}
        if not arrays:
            raise BenchError(f"{path}: no feature view (arrays other than Y, label_names, train_idx, test_idx)")
        views = {}
        for name, array in arrays.items():
            views[name] = numeric_view(array, path)
            if len(views[name]) != len(Y):
                raise BenchError(f"{path}: view {name!r} has {len(views[name])} rows, Y has {len(Y)}")
        return views, Y, label_names, splits

    @staticmethod
    def read_csvs(root: Path):
        path = root / "labels.csv"
        table = read_csv(path)
        label_names = [c for c in table.columns if c != SPLIT_COLUMN]
        Y = binary_labels(table[label_names].to_numpy(), path, label_names)
        splits = split_indices(table[SPLIT_COLUMN], path) if SPLIT_COLUMN in table.columns else {}
        files = sorted((root / "views").glob("*.csv"))
        if not files:
            raise BenchError(f"{root / 'views'}: no view file (expected views/<name>.csv, one per view)")
        views = {}
        for file in files:
            views[file.stem] = numeric_view(read_csv(file).to_numpy(), file)
            if len(views[file.stem]) != len(Y):
                raise BenchError(f"{file}: {len(views[file.stem])} rows, {path.name} has {len(Y)}")
        return views, Y, label_names, splits
