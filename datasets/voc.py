"""``voc2007`` and ``voc2012``: PASCAL Visual Object Classes, as multi-label image classification.

Data
----
Everingham et al. (2010). Each image's labels are the 20 object classes that occur in its
annotation XML (``Annotations/<id>.xml``, one ``<object>`` per box with ``<name>`` and
``<difficult>``), in the devkit's class order (alphabetical, as ``ImageSets/Main/<class>_*.txt``
and ML-GCN's ``object_categories``). Images are files (:class:`~bench.data.ImageView` of paths);
loading parses XML only and never reads pixels.

On-disk layout (torchvision's, so ``bench fetch`` and ``torchvision.datasets.VOCDetection`` agree)::

    <data root>/VOCdevkit/VOC2007/Annotations/000005.xml
                                 /JPEGImages/000005.jpg
                                 /ImageSets/Main/trainval.txt, test.txt
    <data root>/VOCdevkit/VOC2012/...  (ImageSets/Main/train.txt, val.txt)

Splits (protocol ``"official"``)
--------------------------------
* VOC 2007: train on ``trainval`` (5,011 images), test on ``test`` (4,952), the split of ML-GCN,
  DER and CMSG.
* VOC 2012: the test labels were never released (the evaluation server keeps them), so this
  loader offers the public ``train`` (5,717) / ``val`` (5,823) split of ``trainval`` as its
  official split; numbers on it are not comparable with test-server numbers.

"Difficult" labels
------------------
A class whose every object in an image is marked ``difficult`` is a *difficult-only* label (the
devkit's per-class lists code it 0, between 1 = present and -1 = absent). As ML-GCN
(``engine.py``: target 0 -> 1 for the loss; ``difficult_examples=True`` in its AP meter) and
mmpretrain's ``VOCMultiLabelMetric`` (``difficult_as_positive=None``) do, such a label is a
positive in ``Y`` (methods train on it) and is marked in ``MultiLabelData.ignore``, which the
runner passes to :func:`bench.metrics.evaluate` so AP leaves it out of that label's ranking.

Images are checked for existence (one directory listing); their content is not read. A
truncated JPEG is reported when it is decoded, or up front with ``verify_images=True``, which
checks each file's JPEG start and end markers (:func:`bench.fetch.check_jpeg_files`; about 0.1 s
per thousand files on a local disk).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import Archive, check_jpeg_files

#: The devkit's class order (alphabetical), the label order of ML-GCN and mmpretrain.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}
VOC_CITATION = (
    "Everingham, M., Van Gool, L., Williams, C. K. I., Winn, J. and Zisserman, A. (2010). The PASCAL "
    "Visual Object Classes (VOC) Challenge. International Journal of Computer Vision 88(2), 303-338."
)


def _torchvision_archives(*keys: str) -> tuple[Archive, ...]:
    """The devkit tarballs with torchvision's own URLs and MD5s (``VOCDetection(download=True)``)."""
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    return tuple(Archive(DATASET_YEAR_DICT[k]["url"], DATASET_YEAR_DICT[k]["md5"],
                         DATASET_YEAR_DICT[k]["filename"]) for k in keys)


def read_image_set(path: Path) -> list[str]:
    """Image ids of ``ImageSets/Main/<set>.txt`` (one id per line)."""
    if not path.is_file():
        raise BenchError(f"{path}: image set file not found (VOCdevkit layout expected; see docs/datasets.md "
                         "or run `bench fetch`)")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise BenchError(f"{path}: image set file lists no image")
    return ids


def parse_annotation(path: Path) -> tuple[set[int], set[int]]:
    """Class indices of an annotation XML: (present with a non-difficult object, difficult only)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise BenchError(f"{path}: annotation file not found") from None
    except ET.ParseError as exc:
        raise BenchError(f"{path}: malformed annotation XML ({exc})") from None
    present, difficult = set(), set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_INDEX:
            raise BenchError(f"{path}: object class {name!r} is not one of the 20 VOC classes")
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise BenchError(f"{path}: <difficult> must be 0 or 1, got {flag!r}")
        (difficult if flag == "1" else present).add(CLASS_INDEX[name])
    return present, difficult - present


def read_labels(annotations: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Y (difficult-only labels included as positives) and the difficult-only mask, [N, 20]."""
    Y = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
    ignore = np.zeros(Y.shape, dtype=bool)
    for row, image_id in enumerate(ids):
        present, difficult_only = parse_annotation(annotations / f"{image_id}.xml")
        Y[row, list(present | difficult_only)] = 1
        ignore[row, list(difficult_only)] = True
    return Y, ignore


def image_paths(folder: Path, ids: list[str], listed_in: Path) -> tuple[Path, ...]:
    """``folder/<id>.jpg`` for each id; every file must exist (checked with one listing)."""
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        raise BenchError(f"{folder}: image folder not found") from None
    for image_id in ids:
        if f"{image_id}.jpg" not in present:
            raise BenchError(f"{folder / (image_id + '.jpg')}: image listed in {listed_in} is missing")
    return tuple(folder / f"{image_id}.jpg" for image_id in ids)


class _PascalVOC(Dataset):
    """Shared loader of one VOC year; subclasses set ``year`` and the two official sets."""

    year: ClassVar[str] = ""
    train_set: ClassVar[str] = "trainval"
    test_set: ClassVar[str] = "test"
    protocol = "official"
    metric_set = "voc"
    per_class_table = True  # DER Table II, CMSG Table 2
    citation = VOC_CITATION

    def __init__(self, verify_images: bool = False):
        self.verify_images = verify_images

    def devkit(self, data_root: Path) -> Path:
        return Path(data_root) / "VOCdevkit" / f"VOC{self.year}"

    def is_available(self, data_root: Path) -> bool:
        root = self.devkit(data_root)
        main = root / "ImageSets" / "Main"
        return ((root / "Annotations").is_dir() and (root / "JPEGImages").is_dir()
                and (main / f"{self.train_set}.txt").is_file() and (main / f"{self.test_set}.txt").is_file())

    def load(self, data_root: Path) -> MultiLabelData:
        root = self.devkit(data_root)
        main = root / "ImageSets" / "Main"
        train_ids = read_image_set(main / f"{self.train_set}.txt")
        test_ids = read_image_set(main / f"{self.test_set}.txt")
        overlap = set(train_ids) & set(test_ids)
        if overlap:
            raise BenchError(f"{main}: {len(overlap)} image(s) are in both {self.train_set}.txt and "
                             f"{self.test_set}.txt (e.g. {sorted(overlap)[0]})")
        ids = train_ids + test_ids
        Y, ignore = read_labels(root / "Annotations", ids)
        paths = image_paths(root / "JPEGImages", train_ids, main / f"{self.train_set}.txt")
        paths += image_paths(root / "JPEGImages", test_ids, main / f"{self.test_set}.txt")
        if self.verify_images:
            check_jpeg_files(paths)
        n_train = len(train_ids)
        return MultiLabelData(
            name=self.name, views={"image": ImageView(paths=paths)}, Y=Y, label_names=VOC_CLASSES,
            protocol=self.protocol, citation=self.citation, description=self.description,
            splits={"train": np.arange(n_train), "test": np.arange(n_train, len(ids))},
            ignore=ignore,
        )


class VOC2007(_PascalVOC):
    """PASCAL VOC 2007: trainval (5,011) / test (4,952), 20 classes (see the module docstring)."""

    name = "voc2007"
    year = "2007"
    train_set, test_set = "trainval", "test"

    description = (
        "PASCAL VOC 2007: 9,963 images, 20 object classes from the annotation XML; official "
        "trainval/test split; difficult-only labels are positives for training, ignored in AP."
    )

    @classmethod
    def archives(cls) -> tuple[Archive, ...]:
        return _torchvision_archives("2007", "2007-test")


class VOC2012(_PascalVOC):
    """PASCAL VOC 2012: the public train (5,717) / val (5,823) split; test labels are not public."""

    name = "voc2012"
    year = "2012"
    train_set, test_set = "train", "val"

    description = (
        "PASCAL VOC 2012: 11,540 trainval images, 20 classes; its test labels are not public, so "
        "the official split here is train/val; difficult-only labels ignored in AP."
    )

    @classmethod
    def archives(cls) -> tuple[Archive, ...]:
        return _torchvision_archives("2012")
