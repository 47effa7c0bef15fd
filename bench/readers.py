"""Readers for the on-disk formats of the papers' datasets: MATLAB ``.mat`` files and text matrices.

MATLAB files (:func:`read_mat`)
    Files saved as v4/v5/v7 are read with :func:`scipy.io.loadmat`; v7.3 files (HDF5 containers,
    ``save -v7.3``, MATLAB's format for variables over 2 GB) with ``h5py``, undoing MATLAB's
    column-major storage and following the object references of cell arrays, so both give the
    same ``{name: array}`` dictionary (cell arrays as object arrays of the MATLAB shape).

Multi-view multi-label files (:func:`mat_views_and_labels`)
    Such sets travel as one ``.mat`` file holding the views either as a cell array (``X{m}``,
    one matrix per modality) or as numbered variables (``X1, X2, ...``), plus a label matrix.
    Both orientations occur (examples in rows, as scikit-learn has it, or in columns, as much
    MATLAB code has it) and labels come coded {0,1} or {-1,1}. Orientation is decided by the
    number of examples N: the one dimension shared by every view and the label matrix (or the
    expected N when the caller knows it); coding by the values found. Anything else is a one-line
    :class:`~bench.errors.BenchError` naming the file and the variable.

Text matrices (:func:`read_text_matrix`)
    Whitespace-separated numbers, one row per line (NUS-WIDE's ``*.dat`` feature files and
    ``Labels_*.txt`` ground-truth columns), parsed with pandas' C parser; a trailing space at the
    end of a line, as NUS-WIDE's files have, is not a column.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from bench.errors import BenchError

#: Variable names taken as the label matrix when the caller names none (compared lower-case).
LABEL_KEYS = ("y", "label", "labels", "target", "targets", "gt", "groundtruth", "ground_truth")
#: ``X1``, ``view_2``, ``fea3``: a name prefix followed by the modality's number.
NUMBERED = re.compile(r"^(?P<prefix>[A-Za-z_]*?)_?(?P<number>\d+)$")


# ---------------------------------------------------------------------------------------- .mat
def read_mat(path: Path) -> dict[str, object]:
    """The variables of a MATLAB file (any version), by name; MATLAB's own header keys dropped."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: MATLAB file not found")
    import h5py

    if h5py.is_hdf5(path):
        return _read_mat_v73(path)
    try:
        raw = scipy.io.loadmat(path, squeeze_me=False)
    except NotImplementedError as exc:  # scipy's answer to a v7.3 header h5py could not open
        raise BenchError(f"{path}: unsupported MATLAB file ({exc})") from None
    except (ValueError, TypeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"{path}: not a readable MATLAB .mat file ({first})") from None
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def _read_mat_v73(path: Path) -> dict[str, object]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {name: _h5_value(f, f[name], path, name) for name in f if not name.startswith("#")}
    except OSError as exc:
        raise BenchError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None


def _h5_value(f, node, path: Path, name: str):
    """One MATLAB v7.3 variable as scipy would return it (MATLAB shape, cells as object arrays)."""
    import h5py

    matlab_class = node.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if isinstance(node, h5py.Group):
        if "MATLAB_sparse" in node.attrs:  # CSC parts; the attribute holds the row count
            n_rows = int(node.attrs["MATLAB_sparse"])
            jc = np.asarray(node["jc"])
            data = np.asarray(node["data"]) if "data" in node else np.ones(0)
            ir = np.asarray(node["ir"]) if "ir" in node else np.zeros(0, dtype=np.int64)
            return scipy.sparse.csc_matrix((data, ir, jc), shape=(n_rows, len(jc) - 1))
        raise BenchError(f"{path}: variable {name!r} is a MATLAB struct/object ({matlab_class or 'group'}); "
                         "expected a numeric matrix or a cell array")
    if "MATLAB_empty" in node.attrs and node.attrs["MATLAB_empty"]:
        return np.zeros((0, 0))
    raw = node[()]
    if matlab_class == "cell" or raw.dtype == h5py.ref_dtype:
        cells = np.empty(raw.shape, dtype=object)
        for index in np.ndindex(raw.shape):
            cells[index] = _h5_value(f, f[raw[index]], path, name)
        return cells.T
    if matlab_class == "char":
        return np.array(["".join(map(chr, np.asarray(raw).T.ravel()))])
    return np.asarray(raw).T


# ------------------------------------------------------------------------- views and labels
def mat_views_and_labels(
    mat: dict[str, object], path: Path, *, views_key: str | None = None, labels_key: str | None = None,
    n_samples: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """The views ([N, d_m] float arrays, in the file's modality order), Y [N, L] in {0,1}, and a
    note saying what was detected (orientation, label coding, where the views were found).

    ``views_key``/``labels_key`` name the variables (cell array, or prefix of numbered ones, and
    label matrix) when detection is not wanted; ``n_samples`` fixes N when the caller knows it.
    """
    label_name = labels_key or _find_label_key(mat, path)
    if label_name not in mat:
        raise BenchError(f"{path}: no variable {label_name!r}; variables: {', '.join(sorted(mat))}")
    raw_views, where = _find_views(mat, path, views_key, exclude=label_name)
    views = [_numeric_matrix(v, path, f"{where}[{i + 1}]") for i, v in enumerate(raw_views)]
    labels = _numeric_matrix(mat[label_name], path, label_name)
    n = n_samples if n_samples is not None else _common_n(views, labels, path, where, label_name)
    views = [_orient(v, n, path, f"{where}[{i + 1}]") for i, v in enumerate(views)]
    Y, coding = label_coding(_orient(labels, n, path, label_name), path, label_name)
    transposed = labels.shape[0] != n or labels.shape == (n, n)
    note = (f"views from {where} ({len(views)}), labels from {label_name!r} coded {coding}"
            f"{', stored [L, N]' if transposed else ''}")
    return [v.astype(np.float32) for v in views], Y, note


def _find_label_key(mat: dict, path: Path) -> str:
    found = [k for k in mat if k.lower() in LABEL_KEYS]
    if len(found) != 1:
        what = "no" if not found else f"several ({', '.join(found)})"
        raise BenchError(f"{path}: {what} label matrix among variables {', '.join(sorted(mat))}; "
                         f"expected exactly one named like {', '.join(LABEL_KEYS[:6])} (or pass labels_key)")
    return found[0]


def _is_matrix(value) -> bool:
    if scipy.sparse.issparse(value):
        return True
    return isinstance(value, np.ndarray) and value.dtype != object and value.ndim == 2 and (
        np.issubdtype(value.dtype, np.number) or value.dtype == bool)


def _cell_views(value) -> list | None:
    """The matrices of a cell array (1-element cells unwrapped), or None if it is not one."""
    if not (isinstance(value, np.ndarray) and value.dtype == object and value.size):
        return None
    items = []
    for item in value.ravel(order="F"):  # MATLAB's linear order, for {M x 1} and {1 x M} alike
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]
        if not _is_matrix(item):
            return None
        items.append(item)
    return items


def _find_views(mat: dict, path: Path, views_key: str | None, exclude: str) -> tuple[list, str]:
    if views_key is not None:
        if views_key in mat:
            cells = _cell_views(mat[views_key])
            if cells is None:
                raise BenchError(f"{path}: variable {views_key!r} is not a cell array of matrices")
            return cells, repr(views_key)
        numbered = _numbered(mat, exclude).get(views_key)
        if not numbered:
            raise BenchError(f"{path}: no cell array {views_key!r} and no variables {views_key}1, {views_key}2, ...")
        return numbered, f"{views_key}1..{views_key}{len(numbered)}"
    cells = {k: c for k, v in mat.items() if k != exclude and (c := _cell_views(v)) is not None}
    if len(cells) == 1:
        (key, views), = cells.items()
        return views, repr(key)
    if len(cells) > 1:
        raise BenchError(f"{path}: several cell arrays of matrices ({', '.join(sorted(cells))}); "
                         "pass views_key to choose the views")
    groups = _numbered(mat, exclude)
    if not groups:
        raise BenchError(f"{path}: no views found: expected a cell array of [N, d] matrices or numbered "
                         f"variables X1, X2, ...; variables: {', '.join(sorted(mat))}")
    largest = max(len(g) for g in groups.values())
    best = [p for p, g in groups.items() if len(g) == largest]
    if len(best) > 1:
        raise BenchError(f"{path}: numbered variables with several prefixes ({', '.join(sorted(best))}); "
                         "pass views_key to choose the views")
    return groups[best[0]], f"{best[0]}1..{best[0]}{largest}"


def _numbered(mat: dict, exclude: str) -> dict[str, list]:
    """Numbered matrix variables grouped by prefix, each group in numeric order (X2 before X10)."""
    groups: dict[str, list[tuple[int, object]]] = {}
    for key, value in mat.items():
        match = NUMBERED.match(key)
        if key != exclude and match and _is_matrix(value):
            groups.setdefault(match["prefix"], []).append((int(match["number"]), value))
    return {p: [v for _, v in sorted(g, key=lambda t: t[0])] for p, g in groups.items()}


def _numeric_matrix(value, path: Path, name: str) -> np.ndarray:
    if scipy.sparse.issparse(value):
        value = value.toarray()
    if not _is_matrix(value):
        shape = getattr(value, "shape", None)
        raise BenchError(f"{path}: variable {name} must be a 2-D numeric matrix, got "
                         f"{type(value).__name__} of shape {shape}")
    return np.asarray(value)


def _common_n(views: list[np.ndarray], labels: np.ndarray, path: Path, where: str, label_name: str) -> int:
    """N: the dimension every view and the label matrix share; the larger if two qualify (L < N)."""
    shared = set(labels.shape)
    for view in views:
        shared &= set(view.shape)
    if not shared:
        dims = ", ".join(f"{where}[{i + 1}] {v.shape}" for i, v in enumerate(views))
        raise BenchError(f"{path}: views and labels share no example count: {dims}, {label_name} {labels.shape}")
    return max(shared)


def _orient(matrix: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    """``matrix`` as [n, d]: transposed when stored [d, n]."""
    if matrix.shape[0] == n:
        return matrix
    if matrix.shape[1] == n:
        return matrix.T
    raise BenchError(f"{path}: variable {name} has shape {matrix.shape}; expected {n} examples in its rows or columns")


def label_coding(Y: np.ndarray, path: Path, name: str) -> tuple[np.ndarray, str]:
    """Y in {0,1} and the coding found: ``{0,1}`` kept, ``{-1,1}`` mapped -1 -> 0; else an error."""
    values = set(np.unique(Y).tolist())
    if values <= {0, 1}:
        return Y.astype(np.uint8), "{0,1}"
    if values <= {-1, 1}:
        return (Y > 0).astype(np.uint8), "{-1,1}"
    shown = sorted(values - {-1, 0, 1}) or sorted(values)  # the out-of-range values, or a mixed coding
    raise BenchError(f"{path}: label matrix {name} must be coded {{0,1}} or {{-1,1}}, found values "
                     f"{[int(v) if float(v).is_integer() else v for v in shown[:5]]}")


# ------------------------------------------------------------------------------ text files
def read_text_matrix(path: Path, *, n_cols: int | None = None, n_rows: int | None = None,
                     dtype=np.float32, what: str = "matrix") -> np.ndarray:
    """A whitespace-separated numeric text matrix [rows, cols], checked against the given shape."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: {what} file not found")
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, engine="c", dtype=np.float64)
    except pd.errors.EmptyDataError:
        raise BenchError(f"{path}: {what} file is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BenchError(f"{path}: malformed {what} file, expected whitespace-separated numbers ({first})") from None
    matrix = frame.to_numpy()
    if np.isnan(matrix).any():  # a short row: pandas pads it with NaN
        row = int(np.flatnonzero(np.isnan(matrix).any(axis=1))[0])
        raise BenchError(f"{path}: line {row + 1} has fewer than {matrix.shape[1]} numbers")
    if n_cols is not None and matrix.shape[1] != n_cols:
        raise BenchError(f"{path}: {matrix.shape[1]} columns, expected {n_cols}")
    if n_rows is not None and matrix.shape[0] != n_rows:
        raise BenchError(f"{path}: {matrix.shape[0]} rows, expected {n_rows}")
    return matrix.astype(dtype, copy=False)


def read_binary_column(path: Path, n_rows: int | None = None) -> np.ndarray:
    """A one-number-per-line 0/1 column (a NUS-WIDE ``Labels_<concept>.txt``) as uint8 [rows]."""
    column = read_text_matrix(path, n_cols=1, n_rows=n_rows, dtype=np.float64, what="label")[:, 0]
    bad = ~np.isin(column, (0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BenchError(f"{path}: line {row + 1} is {column[row]:g}; labels must be 0 or 1")
    return column.astype(np.uint8)


def read_lines(path: Path, what: str = "list") -> list[str]:
    """The non-empty lines of a text file, stripped (image lists)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: {what} file not found")
    lines = [line.strip() for line in path.read_text(encoding="latin-1").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise BenchError(f"{path}: {what} file is empty")
    return lines


def numbered_image_paths(folder: Path, pattern: str, n_images: int, where_to_get: str) -> tuple[Path, ...]:
    """``folder / pattern.format(i)`` for i = 1..n_images, every one present (MIRFLICKR, scene)."""
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        raise BenchError(f"{folder}: image folder not found; {where_to_get}") from None
    names = [pattern.format(i) for i in range(1, n_images + 1)]
    missing = [n for n in names if n not in present]
    if missing:
        raise BenchError(f"{Path(folder) / missing[0]}: image missing ({len(missing)} of {n_images} missing); "
                         f"{where_to_get}")
    return tuple(Path(folder) / n for n in names)
