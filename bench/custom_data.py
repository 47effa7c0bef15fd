"""Readers for bring-your-own data: an image folder with a labels CSV, or multi-view features.

The plug-in ``datasets/custom.py`` registers ``custom-images`` and ``custom-views`` (fixed folders
under the data root); subclass :class:`ImageFolderCSV` or :class:`MultiViewFiles` in a plug-in
file of your own, setting ``name`` (and ``folder``, default: the name), to register more (docs/datasets.md,
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

import csv
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError, one_line, plain

SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")


def read_csv(path: Path, *, columns_are: str = "column names"):
    """A CSV file with a header row, checked: every column named, no name twice, and a first row
    that is not data (a file without a header would silently lose its first example to it)."""
    import pandas as pd

    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: malformed CSV ({str(exc).strip().splitlines()[0]})") from None
    check_header(raw_header(path), path, columns_are)
    return table


def raw_header(path: Path) -> list[str]:
    """The first row of a CSV file as written (pandas renames duplicate and empty names)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return [cell.strip() for cell in next(csv.reader(f), [])]


def check_header(header: list[str], path: Path, columns_are: str) -> None:
    if not header:
        raise BenchError(f"{path}: empty header row; expected {columns_are}")
    if any(not cell for cell in header):
        raise BenchError(f"{path}: column {header.index('') + 1} of the header row has no name; "
                         f"expected {columns_are}")
    if _looks_like_data(header):
        shown = ", ".join(header[:4]) + (", ..." if len(header) > 4 else "")
        raise BenchError(f"{path}: the first row ({shown}) looks like data, not a header; "
                         f"add a header row of {columns_are}")
    duplicates = sorted({cell for cell in header if header.count(cell) > 1})
    if duplicates:
        raise BenchError(f"{path}: duplicate column name(s) {duplicates} in the header row")


def _looks_like_data(header: list[str]) -> bool:
    """Every cell a number, and not pandas' default names 0..d-1 (``to_csv`` of an unnamed frame)."""
    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    return all(number(c) for c in header) and header != [str(i) for i in range(len(header))]


def binary_labels(values, path: Path, label_names) -> np.ndarray:
    """A 0/1 label matrix, or an error naming the file, the column and the bad value."""
    Y = np.asarray(values)
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise BenchError(f"{path}: labels must be a 2-D [N, L] matrix with L >= 1, got shape {Y.shape}")
    numeric = np.issubdtype(Y.dtype, np.number) or Y.dtype == bool
    bad = ~np.isin(Y, (0, 1)) if numeric else np.ones(Y.shape, dtype=bool)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BenchError(f"{path}: label {label_names[c]!r} of row {int(r)} is {plain(Y[r, c])!r}; "
                         "labels must be 0 or 1")
    return Y.astype(np.uint8)


def split_indices(column, path: Path) -> dict[str, np.ndarray]:
    values = np.asarray(column, dtype=str)
    unknown = sorted(set(values) - set(SPLIT_VALUES))
    if unknown:
        raise BenchError(f"{path}: column {SPLIT_COLUMN!r} must be 'train' or 'test', found "
                         f"{[str(u) for u in unknown[:3]]}")
    return {s: np.flatnonzero(values == s) for s in SPLIT_VALUES}


def numeric_view(values, path: Path) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise BenchError(f"{path}: a feature view must be 2-D [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise BenchError(f"{path}: a feature view must be numeric, got dtype {array.dtype}")
    return array.astype(np.float32)


def contract(dataset: Dataset, source: Path, views: dict, Y: np.ndarray, label_names, splits: dict) -> MultiLabelData:
    """The :class:`MultiLabelData` of files read from ``source``; a check it fails names that file."""
    try:
        return MultiLabelData(
            name=dataset.name, views=views, Y=Y, label_names=label_names,
            protocol="official" if splits else dataset.protocol, splits=splits,
            citation=dataset.citation, description=dataset.description,
        )
    except BenchError as exc:
        raise BenchError(f"{source}: {exc}") from None


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
        table = read_csv(path, columns_are="'image', optionally 'split', and one name per label")
        if "image" not in table.columns:
            raise BenchError(f"{path}: expected a column 'image' (paths relative to {root / 'images'})")
        label_names = [c for c in table.columns if c not in ("image", SPLIT_COLUMN)]
        Y = binary_labels(table[label_names].to_numpy(), path, label_names)
        paths = self.image_paths(root / "images", table["image"].astype(str).tolist(), path)
        splits = split_indices(table[SPLIT_COLUMN], path) if SPLIT_COLUMN in table.columns else {}
        return contract(self, path, {"image": ImageView(paths=paths)}, Y, label_names, splits)

    @staticmethod
    def image_paths(folder: Path, names: list[str], listed_in: Path) -> tuple[Path, ...]:
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise BenchError(f"{listed_in}: image {duplicate!r} is listed more than once")
        listings: dict[Path, set[str]] = {}
        paths = []
        base = os.path.normpath(folder)
        for name in names:
            path = Path(os.path.normpath(os.path.join(base, name)))
            if os.path.commonpath([base, path]) != base:  # "../x.jpg", "/etc/x.jpg"
                raise BenchError(f"{listed_in}: image path {name!r} leaves {folder}; paths must be relative "
                                 "to it and stay inside it")
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
            source = root / "views.npz"
            views, Y, label_names, splits = self.read_npz(source)
        else:
            source = root / "labels.csv"
            views, Y, label_names, splits = self.read_csvs(root)
        return contract(self, source, views, Y, label_names, splits)

    @staticmethod
    def read_npz(path: Path):
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise BenchError(f"{path}: not a readable .npz file ({one_line(exc) or type(exc).__name__})") from None
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
        table = read_csv(path, columns_are="label names (and optionally 'split')")
        label_names = [c for c in table.columns if c != SPLIT_COLUMN]
        Y = binary_labels(table[label_names].to_numpy(), path, label_names)
        splits = split_indices(table[SPLIT_COLUMN], path) if SPLIT_COLUMN in table.columns else {}
        files = sorted((root / "views").glob("*.csv"))
        if not files:
            raise BenchError(f"{root / 'views'}: no view file (expected views/<name>.csv, one per view)")
        views = {}
        for file in files:
            views[file.stem] = numeric_view(read_csv(file, columns_are="feature names").to_numpy(), file)
            if len(views[file.stem]) != len(Y):
                raise BenchError(f"{file}: {len(views[file.stem])} rows, {path.name} has {len(Y)}")
        return views, Y, label_names, splits
