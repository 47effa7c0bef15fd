"""The data contract shared by every dataset and method plug-in.

A dataset plug-in returns a :class:`MultiLabelData`: one or more *views* of the same N examples
(feature views: float arrays [N, d_m], one per modality; at most one image view), a label matrix
``Y`` in {0,1}^[N, L], the label names, the official split where the dataset has one, and the
metadata the harness needs to run the papers' protocol (protocol name, citation).

Validation happens once, when the container is built, so that a method never sees NaN features,
a non-binary label matrix or views of different lengths; each failure is a one-line
:class:`~bench.errors.BenchError` naming the dataset and the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.errors import BenchError

FEATURES = "features"
IMAGE = "image"
VIEW_KINDS = (FEATURES, IMAGE)
PROTOCOLS = ("kfold", "official", "holdout")


@dataclass(frozen=True)
class ImageView:
    """Images of a dataset: either an in-memory array or a list of file paths.

    ``array`` is uint8 [N, H, W] (grayscale) or [N, H, W, C]; ``paths`` are image files decoded
    lazily by the image pipeline. Exactly one of the two is set.
    """

    array: np.ndarray | None = None
    paths: tuple[Path, ...] | None = None

    def __post_init__(self):
        if (self.array is None) == (self.paths is None):
            raise BenchError("ImageView: give exactly one of `array` or `paths`")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.paths)

    @property
    def shape(self) -> tuple:
        """Per-image shape for in-memory images, () for files of varying size."""
        return tuple(self.array.shape[1:]) if self.array is not None else ()

    def subset(self, idx: np.ndarray) -> ImageView:
        if self.array is not None:
            return ImageView(array=self.array[idx])
        return ImageView(paths=tuple(self.paths[i] for i in idx))


View = np.ndarray | ImageView


@dataclass(frozen=True)
class MultiLabelData:
    """N examples seen through one or more views, with binary labels Y [N, L].

    ``views`` keeps the dataset's modality order (RMLC feeds modalities to its LSTM in that
    order). ``splits`` holds official index arrays such as ``{"train": ..., "test": ...}``.
    ``protocol`` is the evaluation protocol the papers used for this dataset. ``ignore`` (bool
    [N, L], optional) marks labels left out of evaluation, such as VOC's "difficult"-only objects:
    they stay positives in Y (for training, as ML-GCN does) and are skipped by AP.
    """

    name: str
    views: dict[str, View]
    Y: np.ndarray
    label_names: tuple[str, ...]
    protocol: str = "kfold"
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    citation: str = ""
    description: str = ""
    ignore: np.ndarray | None = None

    def __post_init__(self):
        _validate(self)

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_samples(self) -> int:
        return int(self.Y.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.Y.shape[1])

    @property
    def feature_views(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.views.items() if not isinstance(v, ImageView)}

    @property
    def image_view(self) -> ImageView | None:
        return next((v for v in self.views.values() if isinstance(v, ImageView)), None)

    @property
    def view_kinds(self) -> frozenset[str]:
        kinds = {IMAGE if isinstance(v, ImageView) else FEATURES for v in self.views.values()}
        return frozenset(kinds)

    @property
    def view_dims(self) -> dict[str, tuple]:
        """Feature dimension per feature view; per-image shape for the image view."""
        return {
            k: (v.shape if isinstance(v, ImageView) else (int(v.shape[1]),))
            for k, v in self.views.items()
        }

    def concatenated_features(self) -> np.ndarray:
        """All feature views side by side, [N, sum d_m] (what single-view baselines consume)."""
        feats = list(self.feature_views.values())
        if not feats:
            raise BenchError(f"dataset {self.name!r} has no feature view to concatenate")
        return np.concatenate(feats, axis=1)

    def subset(self, idx: Sequence[int] | np.ndarray) -> MultiLabelData:
        """The examples at ``idx`` (official splits are dropped: they index the full set)."""
        idx = np.asarray(idx)
        views = {k: v.subset(idx) if isinstance(v, ImageView) else v[idx] for k, v in self.views.items()}
        ignore = None if self.ignore is None else self.ignore[idx]
        return replace(self, views=views, Y=self.Y[idx], splits={}, ignore=ignore)

    def fingerprint(self) -> str:
        """A short hash of labels and view shapes, part of every job's identity.

        Hashing Y and the view shapes (not the pixels) is cheap at COCO scale and catches the
        usual ways a dataset changes under a results store: other examples, other labels.
        """
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.Y, dtype=np.uint8).tobytes())
        h.update(repr(sorted((k, self.view_dims[k], len(v)) for k, v in self.views.items())).encode())
        h.update(repr(self.label_names).encode())
        if self.ignore is not None:
            h.update(np.packbits(self.ignore).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> str:
        dims = ", ".join(
            f"{k}:{'x'.join(map(str, d)) if d else 'files'}" for k, d in self.view_dims.items()
        )
        return f"N={self.n_samples} L={self.n_labels} views=[{dims}] protocol={self.protocol}"


def _validate(data: MultiLabelData) -> None:
    where = f"dataset {data.name!r}"
    Y = np.asarray(data.Y)
    if Y.ndim != 2:
        raise BenchError(f"{where}: label matrix Y must be 2-D [N, L], got shape {Y.shape}")
    if Y.size and not np.isin(Y, (0, 1)).all():
        bad = np.unique(Y[~np.isin(Y, (0, 1))])[:5]
        raise BenchError(f"{where}: label matrix Y must contain only 0/1, found values {bad.tolist()}")
    object.__setattr__(data, "Y", Y.astype(np.uint8, copy=False))
    if Y.shape[0] == 0 or Y.shape[1] == 0:
        raise BenchError(f"{where}: no {'examples' if Y.shape[0] == 0 else 'labels'} (label matrix Y has "
                         f"shape {Y.shape})")
    if len(data.label_names) != Y.shape[1]:
        raise BenchError(
            f"{where}: {len(data.label_names)} label names for {Y.shape[1]} label columns"
        )
    names = tuple(str(n) for n in data.label_names)
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise BenchError(f"{where}: label column {empty[0]} has an empty name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BenchError(f"{where}: duplicate label name(s) {duplicates}; each label column needs its own name")
    object.__setattr__(data, "label_names", names)
    if data.ignore is not None:
        ignore = np.asarray(data.ignore)
        if ignore.shape != Y.shape or not np.isin(ignore, (0, 1)).all():
            raise BenchError(f"{where}: ignore mask must be 0/1 of the label matrix's shape {Y.shape}, "
                             f"got shape {ignore.shape}")
        object.__setattr__(data, "ignore", ignore.astype(bool))
    if not data.views:
        raise BenchError(f"{where}: no views")
    if data.protocol not in PROTOCOLS:
        raise BenchError(f"{where}: protocol {data.protocol!r} is not one of {PROTOCOLS}")
    views = {}
    for name, view in data.views.items():
        if len(view) != Y.shape[0]:
            raise BenchError(f"{where}: view {name!r} has {len(view)} rows, Y has {Y.shape[0]}")
        if isinstance(view, ImageView):
            views[name] = view
            continue
        arr = np.asarray(view)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise BenchError(f"{where}: feature view {name!r} must be 2-D [N, d] with d >= 1, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise BenchError(f"{where}: feature view {name!r} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
            raise BenchError(
                f"{where}: feature view {name!r} has NaN/inf in {rows.size} rows (first: {rows[0]})"
            )
        views[name] = arr
    if sum(isinstance(v, ImageView) for v in views.values()) > 1:
        raise BenchError(f"{where}: at most one image view is supported")
    object.__setattr__(data, "views", views)
    object.__setattr__(data, "splits", _validated_splits(where, data.splits, Y.shape[0]))


def _validated_splits(where: str, splits: dict, n: int) -> dict[str, np.ndarray]:
    """Official splits as int64 index arrays: 1-D, in range, no index twice, no two splits sharing
    an example (a shared one would leak test labels into training)."""
    out = {}
    for split, idx in splits.items():
        idx = np.asarray(idx)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (
                idx.size and (idx.min() < 0 or idx.max() >= n)):
            raise BenchError(f"{where}: split {split!r} must be 1-D integer indices into [0, {n})")
        values, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            twice = values[counts > 1]
            raise BenchError(f"{where}: split {split!r} lists {twice.size} example(s) more than once "
                             f"(first: index {int(twice[0])})")
        for other, other_idx in out.items():
            shared = np.intersect1d(other_idx, idx)
            if shared.size:
                raise BenchError(f"{where}: splits {other!r} and {split!r} share {shared.size} example(s) "
                                 f"(first: index {int(shared[0])}); a {split} example must not be a {other} one")
        out[split] = idx.astype(np.int64, copy=False)
    return out
