"""The dataset conformance suite: every dataset plug-in in ``datasets/`` honours the data contract.

One parametrized test runs over every dataset file of the checkout: the embedded ones are built
offline, the others from a fixture written in their exact on-disk format (the writers of the
loaders' own tests; RMLC's Table II sets from their class attributes). Adding a dataset without
a way to build it here fails the suite, so every new plug-in gets tested. Checked: a valid
:class:`MultiLabelData` of the plug-in's name, protocol and metric set; label names (one per
column, unique, non-empty); views of N rows; official split indices integer, in range, each once,
disjoint; the protocol's splits drawable; the fingerprint stable over two independent loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import test_datasets_nus_mir_scene_mm as nus_mir_scene_mm
import test_datasets_voc_coco_custom as voc_coco_custom

from bench import plugins, runner
from bench.data import PROTOCOLS, ImageView, MultiLabelData
from bench.metrics import METRIC_SETS
from bench.protocols import make_splits

PROJECT_DATASETS = plugins.project_root() / "datasets"


def table_ii_file(name: str):
    """A MATLAB file shaped like one of RMLC's sets (Table II's N, L and view dimensions)."""
    def write(root: Path) -> dict:
        cls = plugins.get("datasets", name)
        rng = np.random.default_rng(len(name))
        cells = np.empty((1, len(cls.dims)), dtype=object)
        for m, d in enumerate(cls.dims):
            cells[0, m] = rng.random((cls.n, d), dtype=np.float32)
        Y = (rng.random((cls.n, cls.n_labels)) < 0.2).astype(np.uint8)
        Y[np.arange(cls.n), np.arange(cls.n) % cls.n_labels] = 1  # every label present
        (root / "multimodal").mkdir(parents=True)
        scipy.io.savemat(root / "multimodal" / cls.file_name, {"X": cells, "Y": Y})
        return {}
    return write


def custom_views(root: Path) -> dict:
    rng = np.random.default_rng(0)
    (root / "custom-views").mkdir(parents=True)
    np.savez(root / "custom-views" / "views.npz", Y=rng.integers(0, 2, (30, 3)), a=rng.normal(size=(30, 4)),
             b=rng.normal(size=(30, 2)), label_names=np.array(["x", "y", "z"]), train_idx=np.arange(20),
             test_idx=np.arange(20, 30))
    return {}


def mat_views(root: Path) -> dict:
    (root / "multimodal").mkdir(parents=True)
    rng = np.random.default_rng(1)
    scipy.io.savemat(root / "multimodal" / "views.mat", {"X1": rng.random((40, 6)), "X2": rng.random((40, 3)),
                                                        "Y": rng.integers(0, 2, (40, 4))})
    return {}


def writer(function, **kwargs):
    """A fixture writer of the loaders' tests, and the constructor arguments the fixture needs."""
    def write(root: Path) -> dict:
        function(root)
        return kwargs
    return write


#: dataset name -> how to build it: None (embedded: offline) or a writer returning constructor kwargs.
BUILDERS = {
    "mnist-mosaic": None,
    "yeast": None,
    "voc2007": writer(voc_coco_custom.write_voc),
    "voc2012": writer(lambda root: voc_coco_custom.write_voc(
        root, "2012", {"train": voc_coco_custom.VOC_TRAIN, "val": voc_coco_custom.VOC_TEST})),
    "coco2014": writer(voc_coco_custom.write_coco),
    "custom-images": writer(voc_coco_custom.write_custom_images),
    "custom-views": custom_views,
    "nus-wide": writer(nus_mir_scene_mm.make_nus),
    "nus-wide-features": writer(lambda root: nus_mir_scene_mm.make_nus(root, images=False)),
    "mirflickr": writer(nus_mir_scene_mm.make_mirflickr, n_images=nus_mir_scene_mm.N_MIR),
    "scene": writer(nus_mir_scene_mm.make_scene, n_images=nus_mir_scene_mm.N_SCENE),
    "mat-views": mat_views,
    **{name: table_ii_file(name) for name in ("ml2000", "msrc", "taobao", "fcvid", "msra")},
}


def shipped_datasets() -> list[str]:
    return sorted(n for n, p in plugins.load("datasets").items() if p.path.parent == PROJECT_DATASETS)


def test_every_shipped_dataset_can_be_built_here():
    missing = sorted(set(shipped_datasets()) - set(BUILDERS))
    assert not missing, f"dataset plug-ins without a fixture in BUILDERS (add one): {missing}"


@pytest.mark.parametrize("name", shipped_datasets())
def test_dataset_conformance(name, tmp_path):
    if name not in BUILDERS:
        pytest.fail(f"no way to build {name!r} offline: add a fixture writer to BUILDERS")
    build = BUILDERS[name]
    kwargs = build(tmp_path) if build else {}
    cls = plugins.get("datasets", name)
    assert cls().is_available(tmp_path)
    data = cls(**kwargs).load(tmp_path)

    assert isinstance(data, MultiLabelData) and data.name == name
    assert data.protocol in PROTOCOLS and cls.metric_set in METRIC_SETS
    assert data.protocol in {cls.protocol, *(["official"] if data.splits else [])}  # own data: official if split
    n, n_labels = data.Y.shape
    assert n >= 1 and n_labels >= 1 and data.Y.dtype == np.uint8 and set(np.unique(data.Y)) <= {0, 1}

    names = data.label_names
    assert len(names) == n_labels and len(set(names)) == n_labels
    assert all(isinstance(s, str) and s.strip() == s and s for s in names)

    assert data.views
    for view in data.views.values():
        assert len(view) == n
        if isinstance(view, ImageView):
            assert view.array is not None or all(Path(p).is_file() for p in view.paths)
        else:
            assert view.dtype == np.float32 and view.ndim == 2 and view.shape[1] >= 1 and np.isfinite(view).all()

    seen: set[int] = set()
    for idx in data.splits.values():
        assert idx.ndim == 1 and np.issubdtype(idx.dtype, np.integer)
        assert idx.size == np.unique(idx).size and (idx.size == 0 or (idx.min() >= 0 and idx.max() < n))
        assert not seen & set(idx.tolist())  # disjoint splits: no test example in training
        seen |= set(idx.tolist())
    for split in make_splits(data, n_folds=min(3, n), seeds=(0,)):
        assert not np.intersect1d(split.train, split.test).size and split.train.size and split.test.size

    # Stable: the file imported anew (fresh in-module caches) gives the same fingerprint.
    plugins.load.cache_clear()
    runner.load_dataset.cache_clear()
    again = plugins.get("datasets", name)(**kwargs).load(tmp_path)
    assert again.fingerprint() == data.fingerprint() and again.label_names == names
