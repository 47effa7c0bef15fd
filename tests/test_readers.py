"""bench.readers: .mat files (v5 via scipy, v7.3 via h5py) and whitespace text matrices, round-tripped
through real files, with every malformed variant giving its one-line error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from bench.errors import BenchError
from bench.readers import (
    label_coding,
    mat_views_and_labels,
    read_binary_column,
    read_mat,
    read_text_matrix,
)

RNG = np.random.default_rng(0)
N, L = 30, 4
VIEWS = [RNG.normal(size=(N, d)) for d in (7, 3, 5)]
Y01 = (RNG.random((N, L)) < 0.4).astype(np.uint8)


def cell(arrays):
    """A MATLAB 1 x M cell array as scipy.io.savemat writes one (an object ndarray)."""
    out = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        out[0, i] = a
    return out


def load(path, **kw):
    return mat_views_and_labels(read_mat(path), path, **kw)


def assert_round_trip(views, Y):
    assert len(views) == len(VIEWS)
    for got, want in zip(views, VIEWS, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got.dtype == np.float32
    np.testing.assert_array_equal(Y, Y01)
    assert Y.dtype == np.uint8


def test_cell_array_rows_are_examples_labels_01(tmp_path):
    path = tmp_path / "set.mat"
    scipy.io.savemat(path, {"X": cell(VIEWS), "Y": Y01.astype(float)})
    views, Y, note = load(path)
    assert_round_trip(views, Y)
    assert "'X'" in note and "{0,1}" in note


def test_cell_array_transposed_views_and_pm1_labels_stored_l_by_n(tmp_path):
    path = tmp_path / "set.mat"
    # MATLAB style: an M x 1 cell of [d, N] matrices, labels [L, N] coded -1/1.
    col = np.empty((3, 1), dtype=object)
    for i, v in enumerate(VIEWS):
        col[i, 0] = v.T
    scipy.io.savemat(path, {"data": col, "target": np.where(Y01.T == 1, 1.0, -1.0)})
    views, Y, note = load(path)
    assert_round_trip(views, Y)
    assert "{-1,1}" in note and "[L, N]" in note


def test_numbered_variables_in_numeric_order_and_sparse_labels(tmp_path):
    path = tmp_path / "set.mat"
    # X2 must come before X10: numeric, not lexical, order.
    many = [RNG.normal(size=(N, 2 + i)) for i in range(10)]
    scipy.io.savemat(path, {**{f"X{i + 1}": v for i, v in enumerate(many)},
                            "labels": scipy.sparse.csc_matrix(Y01.astype(float))})
    views, Y, _ = load(path)
    assert [v.shape[1] for v in views] == [2 + i for i in range(10)]
    np.testing.assert_allclose(views[9], many[9], rtol=1e-6)
    np.testing.assert_array_equal(Y, Y01)


def test_explicit_keys_override_detection(tmp_path):
    path = tmp_path / "set.mat"
    scipy.io.savemat(path, {"train": cell(VIEWS), "other": cell(VIEWS[:1]), "gt": Y01.astype(float),
                            "Y": np.zeros((2, 2))})
    with pytest.raises(BenchError, match="several"):
        load(path)
    views, Y, _ = load(path, views_key="train", labels_key="gt")
    assert_round_trip(views, Y)


def write_v73(path, views, Y):
    """A MATLAB v7.3 file as MATLAB lays it out: column-major data, a cell as object references
    into ``#refs#``, a MATLAB_class attribute on each variable, a 512-byte header before the HDF5 data."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        handles = []
        for i, v in enumerate(views):
            ds = refs.create_dataset(f"v{i}", data=v.T)  # MATLAB stores [N, d] as HDF5 [d, N]
            ds.attrs["MATLAB_class"] = np.bytes_("double")
            handles.append(ds.ref)
        x = f.create_dataset("X", data=np.array(handles, dtype=h5py.ref_dtype).reshape(len(views), 1))
        x.attrs["MATLAB_class"] = np.bytes_("cell")
        y = f.create_dataset("Y", data=Y.T.astype(np.uint8))
        y.attrs["MATLAB_class"] = np.bytes_("logical")
        name = f.create_dataset("name", data=np.frombuffer(b"ML2000", dtype=np.uint8).astype(np.uint16)[:, None])
        name.attrs["MATLAB_class"] = np.bytes_("char")
    with open(path, "r+b") as f:  # MATLAB's text header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_v73_hdf5_file_reads_like_v5(tmp_path):
    v5, v73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
    scipy.io.savemat(v5, {"X": cell(VIEWS), "Y": Y01.astype(float)})
    write_v73(v73, VIEWS, Y01)
    assert read_mat(v73)["name"].tolist() == ["ML2000"]
    a, b = load(v5), load(v73)
    assert_round_trip(b[0], b[1])
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad, message", [
    (np.where(Y01 == 1, 2.0, 0.0), r"coded \{0,1\} or \{-1,1\}, found values \[2\]"),
    (Y01.astype(float) - (RNG.random(Y01.shape) < 0.2), r"found values \[-1, 0, 1\]"),
])
def test_label_out_of_range(tmp_path, bad, message):
    path = tmp_path / "set.mat"
    scipy.io.savemat(path, {"X": cell(VIEWS), "Y": bad})
    with pytest.raises(BenchError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)


def test_row_count_mismatch_between_views(tmp_path):
    path = tmp_path / "set.mat"
    scipy.io.savemat(path, {"X": cell([VIEWS[0], VIEWS[1][:-1], VIEWS[2]]), "Y": Y01.astype(float)})
    with pytest.raises(BenchError, match="share no example count"):
        load(path)
    # With N known, the message names the offending view.
    with pytest.raises(BenchError, match=r"'X'\[2\] has shape \(29, 3\); expected 30 examples"):
        load(path, n_samples=N)


@pytest.mark.parametrize("variables, message", [
    ({"X": cell(VIEWS)}, "no label matrix"),
    ({"X": cell(VIEWS), "Y": Y01, "labels": Y01}, "several"),
    ({"Y": Y01.astype(float), "note": np.array(["hello"])}, "no views found"),
    ({"X": cell(VIEWS), "Y": np.zeros((2, 3, 4))}, "must be a 2-D numeric matrix"),
])
def test_malformed_layouts(tmp_path, variables, message):
    path = tmp_path / "set.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(BenchError, match=message):
        load(path)


def test_missing_and_non_mat_files(tmp_path):
    with pytest.raises(BenchError, match="MATLAB file not found"):
        read_mat(tmp_path / "absent.mat")
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(BenchError, match="not a readable MATLAB"):
        read_mat(junk)
    truncated = tmp_path / "cut.mat"
    scipy.io.savemat(truncated, {"X": cell(VIEWS), "Y": Y01.astype(float)})
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(BenchError, match=str(truncated)):
        load(truncated)


def test_label_coding_by_hand():
    Y, coding = label_coding(np.array([[-1, 1], [1, -1]]), "f", "Y")
    assert coding == "{-1,1}" and Y.tolist() == [[0, 1], [1, 0]]
    Y, coding = label_coding(np.array([[0, 1], [1, 1]]), "f", "Y")
    assert coding == "{0,1}" and Y.tolist() == [[0, 1], [1, 1]]


# ------------------------------------------------------------------------------ text
def test_text_matrix_with_trailing_spaces_as_nus_wide_ships_it(tmp_path):
    M = RNG.random((5, 4)).round(6)
    path = tmp_path / "Normalized_CH.dat"
    path.write_text("".join(" ".join(f"{x:.6f}" for x in row) + " \n" for row in M))
    np.testing.assert_allclose(read_text_matrix(path, n_cols=4, n_rows=5), M, rtol=1e-6)


@pytest.mark.parametrize("text, kwargs, message", [
    ("1 2 3\n4 5 6\n", {"n_cols": 4}, "3 columns, expected 4"),
    ("1 2 3\n4 5 6\n", {"n_rows": 3}, "2 rows, expected 3"),
    ("1 2 3\n4 5\n", {}, "line 2 has fewer than 3 numbers"),
    ("1 2\n4 5 6\n", {}, "malformed"),
    ("1 2 x\n", {}, "malformed"),
    ("", {}, "is empty"),
])
def test_text_matrix_errors(tmp_path, text, kwargs, message):
    path = tmp_path / "m.dat"
    path.write_text(text)
    with pytest.raises(BenchError, match=message) as err:
        read_text_matrix(path, **kwargs)
    assert str(path) in str(err.value)


def test_binary_column(tmp_path):
    path = tmp_path / "Labels_sky.txt"
    path.write_text("0\n1\n1\n0\n")
    assert read_binary_column(path, 4).tolist() == [0, 1, 1, 0]
    path.write_text("0\n1\n2\n")
    with pytest.raises(BenchError, match="line 3 is 2; labels must be 0 or 1"):
        read_binary_column(path)
    with pytest.raises(BenchError, match="label file not found"):
        read_binary_column(tmp_path / "Labels_absent.txt")
