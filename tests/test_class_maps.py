"""Class maps, from the method to the figure: a job stores the maps of its first test images with
their thumbnails and true labels (checked like the scores), the results layer reads them back, and
the report draws one line per image with an overlay per predicted label. The expectations are
written by hand from the plug-ins below: which labels each test image predicts, which are true,
and where each label's map is hot."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from bench import cli, image, plots, runner
from bench import results as results_layer
from bench.data import ImageView
from bench.store import ResultStore

# 24 grayscale 12 x 12 images; pixel [1, 0] holds the example's index (the method reads it back),
# the rest is noise. Official split: test = examples 16..23, so the stored four are 16..19.
MAPS_DATASET = '''
import numpy as np
from bench.api import Dataset
from bench.data import ImageView, MultiLabelData

TRUTH = {16: [1, 0, 0], 17: [0, 1, 0], 18: [0, 1, 1], 19: [0, 0, 1]}


class MapsToy(Dataset):
    name = "maps-toy"
    protocol = "official"
    embedded = True

    def load(self, data_root):
        rng = np.random.default_rng(0)
        images = rng.integers(30, 220, size=(24, 12, 12), dtype=np.uint8)
        images[:, 1, 0] = np.arange(24)
        Y = (rng.random((24, 3)) < 0.5).astype("uint8")
        for i, labels in TRUTH.items():
            Y[i] = labels
        feats = rng.normal(size=(24, 2)).astype("float32")
        return MultiLabelData("maps-toy", {"img": ImageView(array=images), "f": feats}, Y,
                              ("cat", "dog", "sky"), protocol="official",
                              splits={"train": np.arange(16), "test": np.arange(16, 24)})
'''

# Scores per example (rows 16..19 hand-picked; threshold 0.5); label j's map of example i is
# 5 at the cell HOT(i, j) of a 3 x 3 grid over 0.1 x its cell number elsewhere.
HOT_METHOD = '''
import numpy as np
from bench.api import Method, NoClassMaps
from bench.data import FEATURES, IMAGE

SCORES = np.full((24, 3), 0.2)
SCORES[16:20] = [[0.9, 0.2, 0.7], [0.1, 0.3, 0.2], [0.6, 0.8, 0.95], [0.55, 0.1, 0.1]]


def hot_cell(i, j):
    return (i + j) % 3, (i + 2 * j) % 3


def maps_of(index):
    maps = np.tile(0.1 * np.arange(9.0).reshape(3, 3), (len(index), 3, 1, 1))
    for n, i in enumerate(index):
        for j in range(3):
            maps[(n, j, *hot_cell(int(i), j))] = 5.0
    return maps


class Hot(Method):
    name = "hot"
    accepts = frozenset({IMAGE})

    def fit(self, train, val=None):
        return self

    def predict_scores(self, data):
        return SCORES[self.index(data)]

    def index(self, data):
        return data.image_view.array[:, 1, 0].astype(int)

    def class_maps(self, data):
        return maps_of(self.index(data))


class Features(Method):
    """Has class_maps, learns from features: on a feature-only dataset it is never called."""
    name = "hot-features"
    accepts = frozenset({FEATURES})

    def fit(self, train, val=None):
        return self

    def predict_scores(self, data):
        return np.full(data.Y.shape, 0.5)

    def class_maps(self, data):
        raise AssertionError("class_maps called on a dataset without images")


class Mapless(Hot):
    """A network without maps after all (as a DeepMethod whose head gives none)."""
    name = "mapless"

    def class_maps(self, data):
        raise NoClassMaps("no maps here")
'''

# (first stored test example, (label, predicted) shown, true?) by hand from SCORES and TRUTH.
EXPECTED = {
    16: [(0, True, True), (2, True, False)],  # 0.9, 0.7 predicted; only cat is true
    17: [(1, False, True)],  # nothing predicted: the top-scored label, dog (true)
    18: [(2, True, True), (1, True, True), (0, True, False)],  # by score 0.95, 0.8, 0.6
    19: [(0, True, False)],
}
NAMES = ("cat", "dog", "sky")
SCORES = {16: [0.9, 0.2, 0.7], 17: [0.1, 0.3, 0.2], 18: [0.6, 0.8, 0.95], 19: [0.55, 0.1, 0.1]}


@pytest.fixture
def plugins_dir(isolated):
    (isolated / "datasets" / "maps_toy.py").write_text(textwrap.dedent(MAPS_DATASET))
    (isolated / "methods" / "hot.py").write_text(textwrap.dedent(HOT_METHOD))
    return isolated


def run(tmp_path, method, dataset="maps-toy") -> int:
    return cli.main(["run", "--method", method, "--dataset", dataset, "--no-progress", "--folds", "2", "--seeds", "0"])


def stored(tmp_path, method):
    store = ResultStore(tmp_path / "results")
    [record] = [r for r in store.records() if r["config"]["method"] == method]
    return store, record


def dataset():
    return runner.load_dataset("maps-toy", "")


def test_a_job_stores_the_maps_thumbnails_and_labels_of_its_first_test_images(tmp_path, plugins_dir):
    assert run(tmp_path, "hot") == 0
    store, record = stored(tmp_path, "hot")
    arrays = store.arrays(record)
    first = arrays["test_index"][:runner.CLASS_MAP_IMAGES]
    assert first.tolist() == [16, 17, 18, 19]
    assert arrays["class_maps"].dtype == np.float16 and arrays["class_maps"].shape == (4, 3, 3, 3)
    expected = np.tile(0.1 * np.arange(9.0).reshape(3, 3), (4, 3, 1, 1))
    for n, i in enumerate(first):
        for j in range(3):
            expected[n, j, (i + j) % 3, (i + 2 * j) % 3] = 5.0
    np.testing.assert_allclose(arrays["class_maps"].astype(float), expected, rtol=1e-3)
    data = dataset()
    gray = data.image_view.array[first]
    assert arrays["class_map_images"].dtype == np.uint8 and arrays["class_map_images"].shape == (4, 12, 12, 3)
    np.testing.assert_array_equal(arrays["class_map_images"], np.stack([gray] * 3, axis=-1))
    assert arrays["class_map_image_sizes"].tolist() == [[12, 12]] * 4
    assert arrays["class_map_labels"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["class_map_labels"], data.Y[first])
    assert arrays["class_map_labels"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert "class_maps_s" in record["timings"]


def test_the_report_draws_one_line_per_image_and_an_overlay_per_predicted_label(tmp_path, plugins_dir):
    assert run(tmp_path, "hot") == 0
    assert cli.main(["report", "--dataset", "maps-toy", "--format", "md"]) == 0
    assert (tmp_path / "reports" / "figures" / "maps-toy__official__class_maps_hot.png").stat().st_size > 0
    results = results_layer.load(ResultStore(tmp_path / "results"), ["maps-toy"])
    [plot] = plots.class_map_plots(results)
    assert plot.name == "maps-toy__official__class_maps_hot" and plot.rows == {"hot"}
    title = plot.figure.get_suptitle()
    assert "Class maps of hot" in title and "maps-toy" in title and "fold 0, seed 0" in title
    axes = plot.figure.axes
    assert len(axes) == 4 + sum(len(v) for v in EXPECTED.values())  # an image and its overlays per line
    images = ResultStore(tmp_path / "results").arrays(results.records[0])["class_map_images"]
    it = iter(axes)
    for n, (i, shown) in enumerate(EXPECTED.items()):
        image_ax = next(it)
        assert image_ax.get_title().startswith(f"test #{i}:")
        np.testing.assert_array_equal(image_ax.images[0].get_array(), images[n])
        for label, predicted, true in shown:
            ax = next(it)
            want = f"{NAMES[label]} {SCORES[i][label]:.2f} {'✓' if true else '✗'}"
            assert ax.get_title() == (want if predicted else want + "\n(not predicted)")
            base, overlay = ax.images
            np.testing.assert_array_equal(base.get_array(), images[n])
            drawn = np.asarray(overlay.get_array())
            assert drawn.shape == (12, 12) and drawn.min() == 0 and drawn.max() == pytest.approx(1)
            row, col = np.unravel_index(np.argmax(drawn), drawn.shape)
            assert (row // 4, col // 4) == ((i + label) % 3, (i + 2 * label) % 3)  # 3x3 grid of 4-px cells
            assert 0 < overlay.get_alpha() < 1
    plots.close([plot])


def test_upsampling_is_bilinear_with_pixel_centres_aligned():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(1).random((3, 5))
    reference = torch.nn.functional.interpolate(torch.tensor(grid)[None, None], size=(7, 11), mode="bilinear",
                                                align_corners=False)[0, 0].numpy()
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    np.testing.assert_allclose(plots.upsampled_map(grid, 7, 11), reference, atol=1e-12)


def test_methods_without_maps_store_none_and_get_no_figure(tmp_path, plugins_dir):
    assert run(tmp_path, "br,mapless") == 0
    assert run(tmp_path, "hot-features", dataset="tiny") == 0  # feature-only data: class_maps not called
    store = ResultStore(tmp_path / "results")
    records = list(store.records())
    assert sorted(r["config"]["method"] for r in records) == ["br", "hot-features", "hot-features", "mapless"]
    for rec in records:
        assert not any(k.startswith("class_map") for k in store.arrays(rec)), rec["config"]["method"]
        assert "class_maps_s" not in rec["timings"]
    assert plots.class_map_plots(results_layer.load(store)) == []


@pytest.mark.parametrize("maps, message", [
    ("-maps_of(self.index(data))", "class_maps returned negative values (min -5)"),
    ("maps_of(self.index(data))[:, :2]", "class_maps returned shape (4, 2, 3, 3), expected [4, 3, h, w]"),
    ("maps_of(self.index(data))[:, :, 0]", "class_maps returned shape (4, 3, 3), expected [4, 3, h, w]"),
    ("maps_of(self.index(data)) * np.nan", "class_maps returned NaN/inf"),
])
def test_bad_maps_fail_the_job_in_one_line_naming_the_method(tmp_path, plugins_dir, capsys, maps, message):
    (plugins_dir / "methods" / "bad.py").write_text(textwrap.dedent(HOT_METHOD).replace(
        "return maps_of(self.index(data))", f"return {maps}").replace('name = "hot"', 'name = "bad"')
        .replace('"hot-features"', '"bad-features"').replace('"mapless"', '"bad-mapless"'))
    assert run(tmp_path, "bad") == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if "job failed" in x]
    assert f"method 'bad': {message}" in line
    assert not list(ResultStore(tmp_path / "results").records())


def test_thumbnails_of_image_files_are_rgb_at_most_224_pixels_padded_to_the_largest(tmp_path):
    from PIL import Image

    wide = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (150, 1))  # a horizontal gradient
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.png")
    small = np.zeros((40, 60, 3), np.uint8)
    small[..., 0] = 200
    Image.fromarray(small).save(tmp_path / "small.png")
    images, sizes = image.thumbnails(ImageView(paths=(tmp_path / "wide.png", tmp_path / "small.png")))
    assert images.dtype == np.uint8 and images.shape == (2, 112, 224, 3)
    assert sizes.tolist() == [[112, 224], [40, 60]]
    reference = np.asarray(Image.fromarray(wide).resize((224, 112), Image.BILINEAR), dtype=int)
    for c in range(3):  # grayscale became RGB; antialiased downscaling as PIL's
        assert np.abs(images[0, ..., c].astype(int) - reference).max() <= 2
    np.testing.assert_array_equal(images[1, :40, :60], small)
    assert not images[1, 40:].any() and not images[1, :, 60:].any()  # the padding is black
