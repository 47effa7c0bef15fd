"""NUS-WIDE, MIRFLICKR-25k, scene and the RMLC multi-modal sets: small fixtures written in each
dataset's on-disk format (real JPEGs, real .mat files, whitespace text matrices and id lists),
round-tripped through the loaders, and each malformed variant's one-line error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.io
from PIL import Image

from bench import plugins
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.metrics import METRIC_SETS

DATASETS = {name: plugins.get("datasets", name) for name in plugins.load("datasets")}
RNG = np.random.default_rng(1)


def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_jpeg(path, seed=0, truncate=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(seed)
    path.write_bytes(data[: len(data) // 2] if truncate else data)


def check_contract(data: MultiLabelData, cls) -> None:
    """The MultiLabelData shape contract every loader reports (the same as the embedded sets')."""
    assert isinstance(data, MultiLabelData) and data.name == cls.name
    assert data.Y.dtype == np.uint8 and data.Y.ndim == 2 and set(np.unique(data.Y)) <= {0, 1}
    assert len(data.label_names) == data.n_labels
    assert all(len(v) == data.n_samples for v in data.views.values())
    assert data.protocol == cls.protocol and cls.metric_set in METRIC_SETS
    for idx in data.splits.values():
        assert idx.ndim == 1 and (idx.size == 0 or idx.max() < data.n_samples)
    if data.splits:
        assert np.intersect1d(data.splits["train"], data.splits["test"]).size == 0
        assert data.splits["train"].size + data.splits["test"].size == data.n_samples


def test_plugins_registered():
    for name in ("nus-wide", "nus-wide-features", "mirflickr", "scene", "ml2000", "msrc", "taobao",
                 "fcvid", "msra", "mat-views"):
        assert name in DATASETS
        assert not DATASETS[name]().is_available("/nonexistent-data-root")


# ======================================================================== NUS-WIDE
NUS = DATASETS["nus-wide"]
NUS_FEATURES = DATASETS["nus-wide-features"]
# NUS-WIDE's Concepts81.txt, as distributed with the dataset (alphabetical), written out here so the
# loader is checked against the documentation, not against its own list.
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
VIEW_DIMS = {"CH": 64, "CORR": 144, "EDH": 73, "WT": 128, "CM55": 225, "BoW": 500}
TRAIN = [f"actor\\{i:04d}_{1000 + i}.jpg" for i in range(6)] + ["beach\\0001_77.jpg"]
TEST = [f"beach\\{i:04d}_{2000 + i}.jpg" for i in range(2, 6)]
N_NUS = len(TRAIN) + len(TEST)
# Labels in train-then-test order; rows 2 (train) and 8 (test) carry no concept.
Y_NUS = (RNG.random((N_NUS, 81)) < 0.1).astype(np.uint8)
Y_NUS[:, 0] = 1
Y_NUS[[2, 8]] = 0
FEATS = {v: RNG.random((N_NUS, d)).round(6) for v, d in VIEW_DIMS.items()}
# Imagelist.txt: every image, in another order than train + test, with the archive's prefix.
ALL_ORDER = RNG.permutation(N_NUS)


def write_matrix(path, M):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(f"{x:g}" for x in row) + " \n" for row in M))  # trailing space as shipped


def make_nus(root, labels="TrainTestLabels", features="split", images=True):
    base = root / "nus-wide"
    lists = base / "ImageList"
    lists.mkdir(parents=True)
    (lists / "TrainImagelist.txt").write_text("\r\n".join(TRAIN) + "\r\n")
    (lists / "TestImagelist.txt").write_text("\r\n".join(TEST) + "\r\n")
    keys = TRAIN + TEST
    (lists / "Imagelist.txt").write_text("".join(f"C:\\ImageData\\Flickr\\{keys[i]}\n" for i in ALL_ORDER))
    truth = base / "Groundtruth" / labels
    truth.mkdir(parents=True)
    for j, c in enumerate(CONCEPTS):
        if labels == "TrainTestLabels":
            write_matrix(truth / f"Labels_{c}_Train.txt", Y_NUS[: len(TRAIN), [j]])
            write_matrix(truth / f"Labels_{c}_Test.txt", Y_NUS[len(TRAIN):, [j]])
        else:
            write_matrix(truth / f"Labels_{c}.txt", Y_NUS[ALL_ORDER][:, [j]])
    feats = base / "Low_Level_Features"
    for v, M in FEATS.items():
        if features == "split":
            train_name, test_name = ("BoW_Train_int.dat", "BoW_Test_int.dat") if v == "BoW" else (
                f"Train_Normalized_{v}.dat", f"Test_Normalized_{v}.dat")
            write_matrix(feats / train_name, M[: len(TRAIN)])
            write_matrix(feats / test_name, M[len(TRAIN):])
        else:
            write_matrix(feats / ("BoW_int.dat" if v == "BoW" else f"Normalized_{v}.dat"), M[ALL_ORDER])
    if images:
        for i, key in enumerate(keys):
            write_jpeg(base / "Flickr" / key.replace("\\", "/"), seed=i)
    return base


LABELLED = np.flatnonzero(Y_NUS.any(axis=1))


@pytest.mark.parametrize("labels, features", [("TrainTestLabels", "split"), ("AllLabels", "all")])
def test_nus_wide_features_both_layouts(tmp_path, labels, features):
    make_nus(tmp_path, labels, features, images=False)
    cls = NUS_FEATURES
    assert cls().is_available(tmp_path)
    data = cls().load(tmp_path)
    check_contract(data, cls)
    assert len(CONCEPTS) == 81 and data.label_names == CONCEPTS
    np.testing.assert_array_equal(data.Y, Y_NUS[LABELLED])  # unlabelled rows 2 and 8 dropped
    assert list(data.views) == list(VIEW_DIMS)
    for v, M in FEATS.items():
        np.testing.assert_allclose(data.views[v], M[LABELLED], rtol=1e-5)
    # Official lists, restricted to labelled images: train rows 0-6 minus row 2, test 7-10 minus 8.
    assert data.splits["train"].tolist() == [0, 1, 2, 3, 4, 5]
    assert data.splits["test"].tolist() == [6, 7, 8]


def test_nus_wide_keep_unlabelled_and_order_free_rnn_split(tmp_path):
    make_nus(tmp_path, images=False)
    assert NUS_FEATURES(drop_unlabeled=False).load(tmp_path).n_samples == N_NUS
    data = NUS_FEATURES(split="order-free-rnn", train_size=5, split_seed=3).load(tmp_path)
    assert data.splits["train"].size == 5 and data.splits["test"].size == LABELLED.size - 5
    with pytest.raises(BenchError, match="train_size"):
        NUS_FEATURES(split="order-free-rnn", train_size=50).load(tmp_path)


def test_nus_wide_images_of_the_images_a_user_has(tmp_path, caplog):
    base = make_nus(tmp_path)
    (base / "Flickr" / "actor" / "0004_1004.jpg").unlink()  # train row 4, labelled
    data = NUS().load(tmp_path)
    check_contract(data, NUS)
    assert isinstance(data.views["image"], ImageView)
    kept = [i for i in LABELLED if i != 4]
    np.testing.assert_array_equal(data.Y, Y_NUS[kept])
    keys = [k.replace("\\", "/") for k in TRAIN + TEST]
    assert [p.relative_to(base / "Flickr").as_posix() for p in data.views["image"].paths] == [keys[i] for i in kept]
    assert "1 of 11 listed images" in caplog.text
    with pytest.raises(BenchError, match=r"0004_1004\.jpg: image listed in ImageList/ is missing"):
        NUS(missing_images="error").load(tmp_path)


def test_nus_wide_truncated_jpeg_with_verify(tmp_path):
    base = make_nus(tmp_path)
    write_jpeg(base / "Flickr" / "beach" / "0004_2004.jpg", truncate=True)
    assert NUS().load(tmp_path).n_samples == LABELLED.size  # pixels are not read by default
    with pytest.raises(BenchError, match=r"0004_2004\.jpg: truncated JPEG"):
        NUS(verify_images=True).load(tmp_path)


def test_nus_wide_malformed_files(tmp_path):
    base = make_nus(tmp_path, images=False)
    feats = base / "Low_Level_Features"
    write_matrix(feats / "Test_Normalized_EDH.dat", FEATS["EDH"][len(TRAIN):, :72])
    with pytest.raises(BenchError, match=r"Test_Normalized_EDH\.dat: 72 columns, expected 73"):
        NUS_FEATURES().load(tmp_path)
    write_matrix(feats / "Test_Normalized_EDH.dat", FEATS["EDH"][len(TRAIN) + 1:])  # a row short
    with pytest.raises(BenchError, match=r"Test_Normalized_EDH\.dat: 3 rows, expected 4"):
        NUS_FEATURES().load(tmp_path)
    for f in ("Test_Normalized_EDH.dat", "Train_Normalized_EDH.dat"):
        (feats / f).unlink()
    with pytest.raises(BenchError, match=r"no EDH features \(Train_Normalized_EDH\.dat \+ Test_Normalized_EDH"
                                         r"\.dat, or Normalized_EDH\.dat\)"):
        NUS_FEATURES().load(tmp_path)

    truth = base / "Groundtruth" / "TrainTestLabels"
    (truth / "Labels_sky_Test.txt").write_text("0\n1\n3\n0\n")
    with pytest.raises(BenchError, match=r"Labels_sky_Test\.txt: line 3 is 3; labels must be 0 or 1"):
        NUS().load(tmp_path)
    (truth / "Labels_sky_Test.txt").unlink()
    with pytest.raises(BenchError, match=r"Labels_sky_Test\.txt: label file not found"):
        NUS().load(tmp_path)
    (base / "ImageList" / "TestImagelist.txt").unlink()
    with pytest.raises(BenchError, match=r"TestImagelist\.txt: image list.* file not found"):
        NUS().load(tmp_path)


def test_nus_wide_all_labels_needs_the_full_list(tmp_path):
    base = make_nus(tmp_path, "AllLabels", "all", images=False)
    lines = (base / "ImageList" / "Imagelist.txt").read_text().splitlines()
    (base / "ImageList" / "Imagelist.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(BenchError, match="of the train/test lists is not in the full image list"):
        NUS_FEATURES().load(tmp_path)


# ======================================================================= MIRFLICKR
MIR = DATASETS["mirflickr"]
# MIRFLICKR-25k's annotation files (mirflickr25k_annotations_v080): 24 potential labels, 14 of them
# with a relevant ``_r1`` file, written out from the dataset's documentation.
MIR_POTENTIAL = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake",
    "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky", "structures", "sunset",
    "transport", "tree", "water",
)
MIR_RELEVANT = ("baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
                "portrait", "river", "sea", "tree")
N_MIR = 12
Y_POTENTIAL = (RNG.random((N_MIR, 24)) < 0.3).astype(np.uint8)
Y_POTENTIAL[0] = 0  # an image without any label stays (RETDM counts all 25,000)


def make_mirflickr(root, inside=False):
    for i in range(1, N_MIR + 1):
        write_jpeg(root / "mirflickr" / f"im{i}.jpg", seed=i)
    ann = root / ("mirflickr/annotations" if inside else "mirflickr25k_annotations_v080")
    ann.mkdir(parents=True)
    (ann / "README.txt").write_text("MIRFLICKR-25000 annotations\n")
    for j, label in enumerate(MIR_POTENTIAL):
        ids = np.flatnonzero(Y_POTENTIAL[:, j]) + 1
        (ann / f"{label}.txt").write_text("".join(f"{i}\r\n" for i in ids))
        if label in MIR_RELEVANT:  # relevant: every other potential image
            (ann / f"{label}_r1.txt").write_text("".join(f"{i}\n" for i in ids[::2]))
    return ann


@pytest.mark.parametrize("inside", [False, True])
def test_mirflickr_potential_labels(tmp_path, inside):
    make_mirflickr(tmp_path, inside)
    assert MIR().is_available(tmp_path)
    data = MIR(n_images=N_MIR).load(tmp_path)
    check_contract(data, MIR)
    assert data.n_labels == 24 and data.label_names == MIR_POTENTIAL
    np.testing.assert_array_equal(data.Y, Y_POTENTIAL)
    assert [p.name for p in data.views["image"].paths] == [f"im{i}.jpg" for i in range(1, N_MIR + 1)]


def test_mirflickr_relevant_labels_and_union(tmp_path):
    ann = make_mirflickr(tmp_path)
    data = MIR(labels="relevant", n_images=N_MIR).load(tmp_path)
    assert data.label_names == MIR_RELEVANT
    for j, label in enumerate(MIR_RELEVANT):
        col = MIR_POTENTIAL.index(label)
        expected = np.zeros(N_MIR, dtype=np.uint8)
        expected[(np.flatnonzero(Y_POTENTIAL[:, col]))[::2]] = 1
        np.testing.assert_array_equal(data.Y[:, j], expected)
    # A relevant id absent from the potential file still counts as a potential label.
    (ann / "baby_r1.txt").write_text("1\n")
    assert MIR(n_images=N_MIR).load(tmp_path).Y[0, MIR_POTENTIAL.index("baby")] == 1


def test_mirflickr_malformed(tmp_path):
    ann = make_mirflickr(tmp_path)
    (ann / "sky.txt").write_text("3\n13\n")
    with pytest.raises(BenchError, match=r"sky\.txt: line 2 is '13'; expected an image number in 1\.\.12"):
        MIR(n_images=N_MIR).load(tmp_path)
    (ann / "sky.txt").write_text("3\nim4\n")
    with pytest.raises(BenchError, match="line 2 is 'im4'"):
        MIR(n_images=N_MIR).load(tmp_path)
    (ann / "sky.txt").unlink()
    with pytest.raises(BenchError, match=r"sky\.txt: annotation file not found"):
        MIR(n_images=N_MIR).load(tmp_path)
    (ann / "sky.txt").write_text("1\n")
    (tmp_path / "mirflickr" / "im7.jpg").unlink()
    with pytest.raises(BenchError, match=r"im7\.jpg: image missing \(1 of 12 missing\)"):
        MIR(n_images=N_MIR).load(tmp_path)
    write_jpeg(tmp_path / "mirflickr" / "im7.jpg", truncate=True)
    with pytest.raises(BenchError, match=r"im7\.jpg: truncated JPEG"):
        MIR(n_images=N_MIR, verify_images=True).load(tmp_path)


# ========================================================================== scene
SCENE = DATASETS["scene"]
N_SCENE = 8
Y_SCENE = (RNG.random((N_SCENE, 5)) < 0.3).astype(np.uint8)
Y_SCENE[np.arange(N_SCENE), np.arange(N_SCENE) % 5] = 1
CLASS_NAMES = ("desert", "mountains", "sea", "sunset", "trees")


def miml_mat(path, targets, names=CLASS_NAMES):
    """``miml data.mat`` as distributed: bags (N x 1 cell of 9 x 15), targets, class_name (5 x 1 cell)."""
    bags = np.empty((targets.shape[-1] if targets.shape[0] == 5 else targets.shape[0], 1), dtype=object)
    for i in range(bags.shape[0]):
        bags[i, 0] = RNG.random((9, 15))
    class_name = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        class_name[i, 0] = n
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"bags": bags, "targets": targets, "class_name": class_name})


def make_scene(root, where="processed/miml data.mat", targets=None):
    for i in range(1, N_SCENE + 1):
        write_jpeg(root / "miml-image-data" / "original" / f"{i}.jpg", seed=i)
    targets = np.where(Y_SCENE.T == 1, 1.0, -1.0) if targets is None else targets
    miml_mat(root / "miml-image-data" / where, targets)


@pytest.mark.parametrize("where, targets", [
    ("processed/miml data.mat", None),                      # as distributed: 5 x N, {-1,1}
    ("miml data.mat", Y_SCENE.astype(float)),               # N x 5, {0,1}, at the folder's top
])
def test_scene_round_trip(tmp_path, where, targets):
    make_scene(tmp_path, where, targets)
    assert SCENE().is_available(tmp_path)
    data = SCENE(n_images=N_SCENE).load(tmp_path)
    check_contract(data, SCENE)
    np.testing.assert_array_equal(data.Y, Y_SCENE)
    assert data.label_names == CLASS_NAMES
    assert [p.name for p in data.views["image"].paths] == [f"{i}.jpg" for i in range(1, N_SCENE + 1)]


def test_scene_malformed(tmp_path):
    make_scene(tmp_path)
    mat = tmp_path / "miml-image-data" / "processed" / "miml data.mat"
    miml_mat(mat, np.where(Y_SCENE.T == 1, 2.0, -1.0))
    with pytest.raises(BenchError, match=r"miml data\.mat: label matrix 'targets' must be coded .* \[2\]"):
        SCENE(n_images=N_SCENE).load(tmp_path)
    miml_mat(mat, np.where(Y_SCENE.T[:, :-1] == 1, 1.0, -1.0))
    with pytest.raises(BenchError, match=r"'targets' has shape \(5, 7\); expected \(5, 8\) or \(8, 5\)"):
        SCENE(n_images=N_SCENE).load(tmp_path)
    miml_mat(mat, np.where(Y_SCENE.T == 1, 1.0, -1.0))
    scipy.io.savemat(mat, {"targets": np.where(Y_SCENE.T == 1, 1.0, -1.0),
                           "class_name": np.array([["desert"], ["hills"], ["sea"], ["sunset"], ["trees"]],
                                                  dtype=object)})
    with pytest.raises(BenchError, match=r"'class_name' is .*'hills'"):
        SCENE(n_images=N_SCENE).load(tmp_path)
    miml_mat(mat, np.where(Y_SCENE.T == 1, 1.0, -1.0))
    write_jpeg(tmp_path / "miml-image-data" / "original" / "5.jpg", truncate=True)
    with pytest.raises(BenchError, match=r"5\.jpg: truncated JPEG"):
        SCENE(n_images=N_SCENE, verify_images=True).load(tmp_path)
    (tmp_path / "miml-image-data" / "original" / "5.jpg").unlink()
    with pytest.raises(BenchError, match=r"5\.jpg: image missing"):
        SCENE(n_images=N_SCENE).load(tmp_path)
    mat.unlink()
    with pytest.raises(BenchError, match=r"miml data\.mat: label file not found; get miml-image-data"):
        SCENE(n_images=N_SCENE).load(tmp_path)


# ================================================================= RMLC multi-modal
MSRC_DIMS = (500, 1040, 576)


def msrc_file(root, dims=(576, 500, 1040), n=591, n_labels=24, numbered=False, name="MSRC.mat"):
    """An MSRC-shaped file: views in another order than Table II, labels {-1,1} stored [L, N]."""
    views = [RNG.random((n, d)).astype(np.float32) for d in dims]
    Y = (RNG.random((n, n_labels)) < 0.2).astype(np.uint8)
    write_views_file(root, views, Y, name, numbered)
    return views, Y


def write_views_file(root, views, Y, name, numbered=False):
    """``<root>/multimodal/<name>``: views [N, d] as a cell array X (or fea1, fea2, ... stored [d, N]),
    labels {-1,1} stored [L, N]."""
    labels = np.where(Y.T == 1, 1.0, -1.0)
    folder = root / "multimodal"
    folder.mkdir(parents=True, exist_ok=True)
    if numbered:
        scipy.io.savemat(folder / name, {**{f"fea{i + 1}": v.T for i, v in enumerate(views)}, "target": labels})
    else:
        cells = np.empty((1, len(views)), dtype=object)
        for i, v in enumerate(views):
            cells[0, i] = v
        scipy.io.savemat(folder / name, {"X": cells, "Y": labels})


@pytest.mark.parametrize("numbered", [False, True])
def test_rmlc_set_round_trip_in_table_ii_order(tmp_path, numbered):
    views, Y = msrc_file(tmp_path, numbered=numbered, name="msrc.mat" if numbered else "MSRC.mat")
    cls = DATASETS["msrc"]
    assert cls().is_available(tmp_path)
    data = cls().load(tmp_path)
    check_contract(data, cls)
    assert data.protocol == "kfold" and cls.metric_set == "multimodal"
    assert [data.views[f"view{m}"].shape[1] for m in (1, 2, 3)] == list(MSRC_DIMS)
    by_dim = {v.shape[1]: v for v in views}
    for m, d in enumerate(MSRC_DIMS, start=1):
        np.testing.assert_array_equal(data.views[f"view{m}"], by_dim[d])
    np.testing.assert_array_equal(data.Y, Y)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_labels": 23}, r"23 labels; expected Table II of RMLC: N=591, M=3, L=24, d=\[500, 1040, 576\]"),
    ({"dims": (500, 1040)}, r"2 views \(dims \[500, 1040\]\); expected Table II"),
    ({"dims": (500, 1000, 576)}, r"view dimensions \[500, 1000, 576\]; expected Table II"),
    ({"n": 590}, r"has shape \(590, 500\); expected 591 examples"),
])
def test_rmlc_table_ii_mismatch(tmp_path, kwargs, message):
    msrc_file(tmp_path, **{"dims": MSRC_DIMS, **kwargs})
    with pytest.raises(BenchError, match=message) as err:
        DATASETS["msrc"]().load(tmp_path)
    assert "MSRC.mat" in str(err.value)


def test_rmlc_missing_file_and_generic_reader(tmp_path):
    with pytest.raises(BenchError, match=r"multimodal/ML2000\.mat: MATLAB file not found; these sets are not public"):
        DATASETS["ml2000"]().load(tmp_path)
    views, Y = msrc_file(tmp_path, dims=(6, 4), n=20, n_labels=3, name="views.mat")
    data = DATASETS["mat-views"]().load(tmp_path)
    check_contract(data, DATASETS["mat-views"])
    np.testing.assert_array_equal(data.views["view1"], views[0])
    np.testing.assert_array_equal(data.Y, Y)
