"""VOC, COCO and bring-your-own loaders on fixtures written in the datasets' exact on-disk formats.

Each fixture is a real VOCdevkit tree (JPEG files, annotation XML, ImageSets/Main lists), a real
COCO instances JSON (read by pycocotools) with the 80 official categories, or the custom CSV/NPZ
formats; expected labels are written out by hand next to each fixture. Every malformed variant must
give a one-line BenchError naming the file at fault. ``bench fetch`` is tested against archives served
by a local HTTP server (MD5 good and bad; torchvision's downloader does not take ``file://``) and
an unreachable URL (offline).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import plugins
from bench.cli import main
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import check_jpeg_files, fetch


def load(name: str, root: Path, **kwargs) -> MultiLabelData:
    return plugins.get("datasets", name)(**kwargs).load(root)


def write_jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------------- VOC fixture
# image id -> [(class, difficult)]; expected Y and difficult-only mask written out by hand below.
VOC_TRAIN = {
    "000005": [("chair", 0), ("chair", 1), ("person", 0)],   # chair: one non-difficult -> plain positive
    "000007": [("car", 1)],                                  # car difficult only
    "000009": [("horse", 0), ("person", 1), ("person", 1)],  # person difficult only
}
VOC_TEST = {
    "000001": [("dog", 0), ("aeroplane", 0)],
    "000002": [("tvmonitor", 1), ("train", 0)],
}
EXPECTED_POSITIVES = {  # (image id) -> (classes in Y, classes ignored in AP)
    "000005": ({"chair", "person"}, set()),
    "000007": ({"car"}, {"car"}),
    "000009": ({"horse", "person"}, {"person"}),
    "000001": ({"dog", "aeroplane"}, set()),
    "000002": ({"tvmonitor", "train"}, {"tvmonitor"}),
}


def annotation_xml(image_id: str, objects) -> str:
    parts = [f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
             f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax>"
             f"<ymax>8</ymax></bndbox></object>" for name, difficult in objects]
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>16</width><height>12</height><depth>3</depth></size>{''.join(parts)}</annotation>")


def write_voc(root: Path, year: str = "2007", sets=None) -> Path:
    """A VOCdevkit/VOC<year> tree; ``sets`` maps an image-set name to {image id: objects}."""
    sets = sets or {"trainval": VOC_TRAIN, "test": VOC_TEST}
    devkit = root / "VOCdevkit" / f"VOC{year}"
    main_dir = devkit / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    (devkit / "Annotations").mkdir()
    for k, (set_name, images) in enumerate(sets.items()):
        (main_dir / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in images))
        for j, (image_id, objects) in enumerate(images.items()):
            (devkit / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, objects))
            write_jpeg(devkit / "JPEGImages" / f"{image_id}.jpg", seed=10 * k + j)
    return devkit


@pytest.fixture
def voc_root(tmp_path) -> Path:
    write_voc(tmp_path)
    return tmp_path


def test_voc2007_round_trip(voc_root):
    data = load("voc2007", voc_root)
    names = data.label_names
    assert names[0] == "aeroplane" and names[-1] == "tvmonitor" and len(names) == 20
    assert list(names) == sorted(names)  # the devkit's alphabetical order
    ids = list(VOC_TRAIN) + list(VOC_TEST)
    assert [p.name for p in data.image_view.paths] == [f"{i}.jpg" for i in ids]
    for row, image_id in enumerate(ids):
        positives, ignored = EXPECTED_POSITIVES[image_id]
        assert {names[j] for j in np.flatnonzero(data.Y[row])} == positives, image_id
        assert {names[j] for j in np.flatnonzero(data.ignore[row])} == ignored, image_id
    np.testing.assert_array_equal(data.splits["train"], [0, 1, 2])
    np.testing.assert_array_equal(data.splits["test"], [3, 4])
    assert data.protocol == "official" and plugins.get("datasets", "voc2007").metric_set == "voc"
    assert all(p.is_file() for p in data.image_view.paths)


def test_voc_difficult_labels_are_ignored_in_evaluation(voc_root):
    """The runner passes ``ignore``: a difficult-only positive ranked last must not lower AP."""
    from bench.metrics import evaluate

    test = load("voc2007", voc_root).subset([0, 1, 2])  # car is difficult-only in row 1
    car = test.label_names.index("car")
    scores = np.full(test.Y.shape, 0.5)
    scores[:, car] = [0.9, 0.1, 0.2]  # the difficult car image ranked last
    Y = test.Y.copy()
    Y[0, car] = 1  # a real car positive ranked first
    with_ignore = evaluate(Y, scores, ignore=test.ignore).per_label_ap[car]
    without = evaluate(Y, scores).per_label_ap[car]
    assert with_ignore == 1.0 and without == pytest.approx((1 + 2 / 3) / 2)


def test_voc2012_offers_train_val(tmp_path):
    write_voc(tmp_path, "2012", {"train": VOC_TRAIN, "val": VOC_TEST})
    data = load("voc2012", tmp_path)
    assert data.n_samples == 5 and len(data.splits["train"]) == 3 and len(data.splits["test"]) == 2
    assert "not public" in plugins.get("datasets", "voc2012").description


def test_voc_is_available(voc_root, tmp_path_factory):
    ds = plugins.get("datasets", "voc2007")()
    assert ds.is_available(voc_root)
    assert not ds.is_available(tmp_path_factory.mktemp("empty"))
    assert not plugins.get("datasets", "voc2012")().is_available(voc_root)


@pytest.mark.parametrize("breakage, fragments", [
    (lambda d: (d / "Annotations" / "000007.xml").unlink(), ["000007.xml", "not found"]),
    (lambda d: (d / "Annotations" / "000007.xml").write_text("<annotation><object><name>car"),
     ["000007.xml", "malformed annotation XML"]),
    (lambda d: (d / "Annotations" / "000007.xml").write_text(annotation_xml("000007", [("truck", 0)])),
     ["000007.xml", "'truck'", "20 VOC classes"]),
    (lambda d: (d / "Annotations" / "000007.xml").write_text(annotation_xml("000007", [("car", 2)])),
     ["000007.xml", "<difficult>"]),
    (lambda d: (d / "JPEGImages" / "000009.jpg").unlink(), ["000009.jpg", "trainval.txt", "missing"]),
    (lambda d: (d / "ImageSets" / "Main" / "test.txt").unlink(), ["test.txt", "not found"]),
    (lambda d: (d / "ImageSets" / "Main" / "test.txt").write_text("000001\n000005\n"),
     ["both trainval.txt and test.txt", "000005"]),
])
def test_voc_malformed_inputs(voc_root, breakage, fragments):
    breakage(voc_root / "VOCdevkit" / "VOC2007")
    with pytest.raises(BenchError) as excinfo:
        load("voc2007", voc_root)
    one_line_error(excinfo, *fragments)


def test_truncated_jpeg_is_caught_by_verify_images(voc_root):
    image = voc_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg"
    content = image.read_bytes()
    assert load("voc2007", voc_root, verify_images=True).n_samples == 5  # intact files pass
    image.write_bytes(content[: len(content) // 2])
    assert load("voc2007", voc_root).n_samples == 5  # default: content is not read at load time
    with pytest.raises(BenchError) as excinfo:
        load("voc2007", voc_root, verify_images=True)
    one_line_error(excinfo, "000001.jpg", "truncated JPEG")
    # The check agrees with a real decoder: PIL fails on the same file.
    with pytest.raises(OSError), Image.open(image) as im:
        im.load()


def test_check_jpeg_files_rejects_non_jpeg(tmp_path):
    png = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with pytest.raises(BenchError) as excinfo:
        check_jpeg_files([png])
    one_line_error(excinfo, "x.jpg", "not a JPEG")
    padded = write_jpeg(tmp_path / "padded.jpg")
    padded.write_bytes(padded.read_bytes() + b"\0" * 100)  # trailing padding after EOI is legal
    check_jpeg_files([padded])


# ---------------------------------------------------------------------------------- COCO fixture
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# The official ids skip 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
CAT_ID = dict(zip(COCO_NAMES, COCO_IDS, strict=True))
# split -> {image id: category names of its annotations}; an empty list = no annotation (dropped).
COCO_IMAGES = {
    "train": {9: ["bowl", "broccoli", "bowl"], 25: ["giraffe"], 30: [], 34: ["zebra", "person"]},
    "val": {42: ["dog"], 73: [], 74: ["toothbrush", "airplane"]},
}


def write_coco(root: Path, images=None) -> Path:
    images = images or COCO_IMAGES
    folder = root / "coco"
    (folder / "annotations").mkdir(parents=True)
    ann_id = 1
    for split, content in images.items():
        doc = {"info": {"year": 2014}, "licenses": [], "images": [], "annotations": [],
               "categories": [{"supercategory": "x", "id": CAT_ID[n], "name": n} for n in COCO_NAMES]}
        for image_id, names in content.items():
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            write_jpeg(folder / f"{split}2014" / file_name, seed=image_id)
            doc["images"].append({"id": image_id, "file_name": file_name, "width": 16, "height": 12})
            for name in names:
                doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": CAT_ID[name],
                                           "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0,
                                           "segmentation": [[1, 1, 5, 1, 5, 5]]})
                ann_id += 1
        (folder / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    return folder


@pytest.fixture
def coco_root(tmp_path) -> Path:
    write_coco(tmp_path)
    return tmp_path


def test_coco_round_trip(coco_root):
    data = load("coco2014", coco_root)
    assert data.label_names == tuple(sorted(COCO_NAMES))  # ML-GCN's order: sorted by name
    assert data.label_names[:3] == ("airplane", "apple", "backpack")
    kept = [(s, i, names) for s, content in COCO_IMAGES.items() for i, names in sorted(content.items()) if names]
    assert [p.name for p in data.image_view.paths] == [f"COCO_{s}2014_{i:012d}.jpg" for s, i, _ in kept]
    for row, (_, _, names) in enumerate(kept):
        assert {data.label_names[j] for j in np.flatnonzero(data.Y[row])} == set(names)
    np.testing.assert_array_equal(data.splits["train"], [0, 1, 2])  # image 30 (no annotation) dropped
    np.testing.assert_array_equal(data.splits["test"], [3, 4])      # image 73 dropped
    assert data.ignore is None and data.protocol == "official"
    assert plugins.get("datasets", "coco2014").metric_set == "coco"


def _coco_json(root: Path, split: str = "val") -> Path:
    return root / "coco" / "annotations" / f"instances_{split}2014.json"


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("breakage, fragments", [
    (lambda r: _coco_json(r).unlink(), ["instances_val2014.json", "not found"]),
    (lambda r: _coco_json(r).write_text('{"images": [{"id": 1'), ["instances_val2014.json", "malformed JSON"]),
    (lambda r: _edit_json(_coco_json(r), lambda d: d["categories"].pop()),
     ["instances_val2014.json", "expected 80 distinct categories, found 79"]),
    (lambda r: _edit_json(_coco_json(r), lambda d: d["annotations"][0].update(category_id=12)),
     ["instances_val2014.json", "category_id 12"]),
    (lambda r: _edit_json(_coco_json(r), lambda d: d["annotations"][0].update(image_id=999)),
     ["instances_val2014.json", "unknown image id 999"]),
    (lambda r: _edit_json(_coco_json(r), lambda d: d["categories"][0].update(name="human")),
     ["instances_val2014.json", "differ"]),
    (lambda r: (r / "coco" / "train2014" / "COCO_train2014_000000000025.jpg").unlink(),
     ["COCO_train2014_000000000025.jpg", "missing"]),
])
def test_coco_malformed_inputs(coco_root, breakage, fragments):
    breakage(coco_root)
    with pytest.raises(BenchError) as excinfo:
        load("coco2014", coco_root)
    one_line_error(excinfo, *fragments)


# ------------------------------------------------------------------------------- bring your own
def write_custom_images(root: Path, with_split: bool = True) -> Path:
    folder = root / "custom-images"
    rows = [("a.jpg", "train", 1, 0), ("sub/b.jpg", "train", 0, 1), ("c.jpg", "test", 1, 1)]
    for k, (name, *_rest) in enumerate(rows):
        write_jpeg(folder / "images" / name, seed=k)
    header = "image,split,cat,dog\n" if with_split else "image,cat,dog\n"
    lines = [f"{n},{s},{a},{b}\n" if with_split else f"{n},{a},{b}\n" for n, s, a, b in rows]
    (folder / "labels.csv").write_text(header + "".join(lines))
    return folder


def test_custom_images_round_trip(tmp_path):
    folder = write_custom_images(tmp_path)
    data = load("custom-images", tmp_path)
    assert data.label_names == ("cat", "dog")
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 1], [1, 1]])
    assert data.image_view.paths == (folder / "images" / "a.jpg", folder / "images" / "sub" / "b.jpg",
                                     folder / "images" / "c.jpg")
    assert data.protocol == "official" and data.splits["test"].tolist() == [2]
    write_custom_images(tmp_path / "nosplit", with_split=False)
    assert load("custom-images", tmp_path / "nosplit").protocol == "kfold"


@pytest.mark.parametrize("breakage, fragments", [
    (lambda f: (f / "labels.csv").unlink(), ["labels.csv", "not found"]),
    (lambda f: (f / "images" / "c.jpg").unlink(), ["c.jpg", "missing"]),
    (lambda f: (f / "labels.csv").write_text("image,cat\na.jpg,2\n"), ["labels.csv", "'cat'", "0 or 1"]),
    (lambda f: (f / "labels.csv").write_text("image,cat\na.jpg,yes\n"), ["labels.csv", "'cat'", "0 or 1"]),
    (lambda f: (f / "labels.csv").write_text("file,cat\na.jpg,1\n"), ["labels.csv", "'image'"]),
    (lambda f: (f / "labels.csv").write_text("image,split,cat\na.jpg,dev,1\n"), ["labels.csv", "'dev'"]),
    (lambda f: (f / "labels.csv").write_text("image,cat\na.jpg,1\na.jpg,0\n"), ["labels.csv", "more than once"]),
])
def test_custom_images_malformed(tmp_path, breakage, fragments):
    breakage(write_custom_images(tmp_path))
    with pytest.raises(BenchError) as excinfo:
        load("custom-images", tmp_path)
    one_line_error(excinfo, *fragments)


def test_custom_views_npz_and_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 2, size=(6, 3))
    audio, video = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    folder = tmp_path / "custom-views"
    folder.mkdir()
    np.savez(folder / "views.npz", Y=Y, video=video, audio=audio, label_names=np.array(["x", "y", "z"]),
             train_idx=np.arange(4), test_idx=np.arange(4, 6))
    data = load("custom-views", tmp_path)
    assert list(data.views) == ["video", "audio"]  # saved order kept (RMLC's modality order)
    np.testing.assert_allclose(data.views["audio"], audio.astype(np.float32))
    np.testing.assert_array_equal(data.Y, Y)
    assert data.label_names == ("x", "y", "z") and data.protocol == "official"

    csv_root = tmp_path / "csv"
    (csv_root / "custom-views" / "views").mkdir(parents=True)
    (csv_root / "custom-views" / "labels.csv").write_text(
        "x,y,z\n" + "".join(",".join(map(str, r)) + "\n" for r in Y))
    for name, view in (("1_video", video), ("2_audio", audio)):
        header = ",".join(f"f{j}" for j in range(view.shape[1]))
        np.savetxt(csv_root / "custom-views" / "views" / f"{name}.csv", view, delimiter=",", header=header,
                   comments="")
    from_csv = load("custom-views", csv_root)
    assert list(from_csv.views) == ["1_video", "2_audio"] and from_csv.protocol == "kfold"
    np.testing.assert_allclose(from_csv.views["2_audio"], audio, rtol=1e-6)
    np.testing.assert_array_equal(from_csv.Y, Y)


@pytest.mark.parametrize("arrays, fragments", [
    ({"X": np.ones((3, 2))}, ["views.npz", "'Y'"]),
    ({"Y": np.array([[0, 1], [-1, 1], [1, 0]]), "X": np.ones((3, 2))}, ["views.npz", "0 or 1"]),
    ({"Y": np.array([[0, 1], [1, 1], [1, 0]]), "X": np.ones((4, 2))}, ["views.npz", "'X' has 4 rows"]),
    ({"Y": np.array([[0, 1], [1, 1], [1, 0]]), "X": np.ones((3, 2, 2))}, ["views.npz", "2-D"]),
    ({"Y": np.array([0, 1, 1]), "X": np.ones((3, 2))}, ["views.npz", "2-D [N, L]"]),
    ({"Y": np.array([[0, 1], [1, 1], [1, 0]])}, ["views.npz", "no feature view"]),
])
def test_custom_views_malformed_npz(tmp_path, arrays, fragments):
    (tmp_path / "custom-views").mkdir()
    np.savez(tmp_path / "custom-views" / "views.npz", **arrays)
    with pytest.raises(BenchError) as excinfo:
        load("custom-views", tmp_path)
    one_line_error(excinfo, *fragments)


def test_custom_views_csv_row_mismatch(tmp_path):
    folder = tmp_path / "custom-views"
    (folder / "views").mkdir(parents=True)
    (folder / "labels.csv").write_text("a,b\n1,0\n0,1\n")
    (folder / "views" / "v.csv").write_text("f0\n0.5\n0.25\n1.0\n")
    with pytest.raises(BenchError) as excinfo:
        load("custom-views", tmp_path)
    one_line_error(excinfo, "v.csv", "3 rows", "labels.csv has 2")


# --------------------------------------------------------------------------- shared contract
FIXTURE_WRITERS = {
    "voc2007": lambda root: write_voc(root),
    "voc2012": lambda root: write_voc(root, "2012", {"train": VOC_TRAIN, "val": VOC_TEST}),
    "coco2014": write_coco,
    "custom-images": write_custom_images,
}


@pytest.mark.parametrize("name", ["mnist-mosaic", *FIXTURE_WRITERS])
def test_shape_contract(name, tmp_path):
    """The default dataset and these loaders honour the same MultiLabelData contract."""
    if name in FIXTURE_WRITERS:
        FIXTURE_WRITERS[name](tmp_path)
    cls = plugins.get("datasets", name)
    assert cls().is_available(tmp_path)
    data = load(name, tmp_path)
    assert isinstance(data, MultiLabelData) and data.name == name
    assert data.Y.dtype == np.uint8 and data.Y.ndim == 2 and set(np.unique(data.Y)) <= {0, 1}
    assert len(data.label_names) == data.n_labels and data.protocol == (
        "official" if data.splits else "kfold")
    for view in data.views.values():
        assert len(view) == data.n_samples
        if isinstance(view, ImageView) and view.paths is not None:
            assert all(isinstance(p, Path) and p.is_file() for p in view.paths)
    if data.splits:
        train, test = data.splits["train"], data.splits["test"]
        assert not set(train) & set(test) and len(train) + len(test) == data.n_samples
    assert data.ignore is None or data.ignore.shape == data.Y.shape
    assert data.summary().startswith(f"N={data.n_samples} L={data.n_labels}")


# ---------------------------------------------------------------------------------- CLI + fetch
def test_list_shows_availability_under_data_root(voc_root, capsys):
    assert main(["list", "--data-root", str(voc_root)]) == 0
    out = capsys.readouterr().out
    voc_line = next(line for line in out.splitlines() if line.strip().startswith("voc2007 "))
    coco_line = next(line for line in out.splitlines() if line.strip().startswith("coco2014 "))
    assert "files present" in voc_line and "not found" in coco_line and "bench fetch coco2014" in coco_line
    assert main(["--data-root", str(voc_root), "list"]) == 0  # the global option works too
    assert str(voc_root) in capsys.readouterr().out


FETCH_PLUGIN = '''
from bench.api import Dataset
from bench.fetch import Archive

URL, MD5 = {url!r}, {md5!r}


class Fetchable(Dataset):
    name = "fetchable"

    @classmethod
    def archives(cls):
        return (Archive(URL, MD5, "fetchable.tar.gz", "fetchable"),)
'''


def _fetch_plugin(plugin_root: Path, url: str, md5: str) -> None:
    (plugin_root / "datasets" / "fetchable.py").write_text(textwrap.dedent(FETCH_PLUGIN.format(url=url, md5=md5)))
    plugins.load.cache_clear()


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server over ``tmp_path/www`` (torchvision's downloader needs http(s))."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_verifies_md5_and_extracts(tmp_path, isolated, http_folder):
    www, base_url = http_folder
    source = tmp_path / "src"
    (source / "inner").mkdir(parents=True)
    (source / "inner" / "file.txt").write_text("payload")
    archive = www / "fetchable.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "inner", arcname="inner")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    _fetch_plugin(isolated, f"{base_url}/fetchable.tar.gz", md5)
    fetch("fetchable", tmp_path / "data")
    assert (tmp_path / "data" / "fetchable" / "inner" / "file.txt").read_text() == "payload"

    _fetch_plugin(isolated, f"{base_url}/fetchable.tar.gz", "0" * 32)
    with pytest.raises(BenchError) as excinfo:
        fetch("fetchable", tmp_path / "data2")
    one_line_error(excinfo, "fetchable.tar.gz", "MD5")
    assert not (tmp_path / "data2").exists()  # the bad download and the folders made for it are gone
    (tmp_path / "data" / "fetchable" / "fetchable.tar.gz").write_bytes(b"a damaged copy the user had")
    with pytest.raises(BenchError, match="MD5"):
        fetch("fetchable", tmp_path / "data")
    assert (tmp_path / "data" / "fetchable" / "inner" / "file.txt").read_text() == "payload"  # nothing of theirs


def test_fetch_offline_is_one_clear_line(tmp_path, isolated, capsys):
    _fetch_plugin(isolated, "http://127.0.0.1:9/VOCtrainval.tar", "0" * 32)  # nothing listens on port 9
    assert main(["fetch", "fetchable", "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: cannot download http://127.0.0.1:9/") and "\n" not in err
    assert not (tmp_path / "data").exists()  # offline: no empty data root left behind
    (tmp_path / "data" / "mine").mkdir(parents=True)
    assert main(["fetch", "fetchable", "--data-root", str(tmp_path / "data")]) == 2
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine"]  # a folder that was there stays


def test_fetch_disk_errors_are_not_blamed_on_the_network(tmp_path, isolated, monkeypatch):
    import torchvision.datasets.utils

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", disk_full)
    _fetch_plugin(isolated, "http://127.0.0.1:9/VOCtrainval.tar", "0" * 32)
    with pytest.raises(BenchError) as excinfo:
        fetch("fetchable", tmp_path / "data")
    one_line_error(excinfo, "cannot write or extract", "No space left on device")
    assert "offline" not in str(excinfo.value)


def test_fetch_refuses_embedded_and_download_less_datasets(capsys):
    assert main(["fetch", "yeast"]) == 2 and "embedded" in capsys.readouterr().err
    assert main(["fetch", "custom-views"]) == 2 and "no public download" in capsys.readouterr().err


def test_voc_and_coco_archives_come_from_torchvision_and_cocodataset():
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    voc = plugins.get("datasets", "voc2007").archives()
    assert [(a.url, a.md5) for a in voc] == [(DATASET_YEAR_DICT[k]["url"], DATASET_YEAR_DICT[k]["md5"])
                                             for k in ("2007", "2007-test")]
    coco = plugins.get("datasets", "coco2014").archives()
    assert all(a.url.startswith("http://images.cocodataset.org/") and len(a.md5) == 32 for a in coco)


def test_user_subclass_registers_another_dataset(tmp_path, isolated):
    """The README's recipe: a plug-in file subclassing ImageFolderCSV adds a dataset."""
    (isolated / "datasets" / "birds.py").write_text(
        "from bench.custom_data import ImageFolderCSV\n\n\nclass Birds(ImageFolderCSV):\n    name = 'birds'\n")
    plugins.load.cache_clear()
    write_custom_images(tmp_path)
    (tmp_path / "custom-images").rename(tmp_path / "birds")
    data = load("birds", tmp_path)
    assert data.name == "birds" and data.n_samples == 3 and data.label_names == ("cat", "dog")
