"""``mirflickr``: MIRFLICKR-25k, 25,000 Flickr images with 24 labels, the RETDM paper's protocol.

Data
----
Huiskes & Lew, "The MIR Flickr Retrieval Evaluation", ACM MIR 2008. The two archives of the
dataset's site (``mirflickr25k.zip``, ``mirflickr25k_annotations_v080.zip``) extracted under the
data root::

    <data root>/mirflickr/im1.jpg ... im25000.jpg
    <data root>/mirflickr25k_annotations_v080/<label>.txt, <label>_r1.txt, README.txt
        (or <data root>/mirflickr/annotations/ with the same files)

Each ``<label>.txt`` lists, one per line, the numbers of the images on which the label is
*potentially* visible (24 labels: animals, baby, bird, ... water); ``<label>_r1.txt`` the images on
which it is *relevant* (salient), for 14 of them.

Label set
---------
RETDM (Table I, Section IV-A) uses "24 possible labels", i.e. the *potential* set: ``labels=
"potential"`` (default) makes an image positive for a label listed in ``<label>.txt`` or (when it
exists) ``<label>_r1.txt`` (relevant implies potential; the union guards against a file that
leaves an id out). ``labels="relevant"`` gives the 14 ``_r1`` labels instead. All 25,000 images
are kept, including those without any label (RETDM's Table I counts 25,000). Protocol
``holdout`` (RETDM: "80% images are randomly chosen as the training data, and the rest are used
for testing"), metric columns RETDM's (``retdm``).

Loading reads the annotation files and lists the image folder once; every image must be present
(``n_images`` of them, numbered from 1). ``verify_images=True`` also checks JPEG markers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import check_jpeg_files
from bench.readers import numbered_image_paths

#: The 24 potential labels, in the alphabetical order of the annotation files.
POTENTIAL = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake",
    "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky", "structures", "sunset",
    "transport", "tree", "water",
)
#: The 14 labels that also have a ``_r1`` (relevant) annotation file.
RELEVANT = ("baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
            "portrait", "river", "sea", "tree")
N_IMAGES = 25_000
ANNOTATION_DIRS = ("mirflickr25k_annotations_v080", "mirflickr/annotations")
WHERE_TO_GET = ("get mirflickr25k.zip and mirflickr25k_annotations_v080.zip from "
                "https://press.liacs.nl/mirflickr/")


class MirFlickr25k(Dataset):
    """MIRFLICKR-25k images, 24 potential labels (or 14 relevant ones), random 80/20 hold-out.

    Args:
        labels: ``"potential"`` (24 labels, RETDM) or ``"relevant"`` (the 14 ``_r1`` labels).
        n_images: how many images ``im1.jpg`` ... the folder holds (25,000 as distributed).
        verify_images: check each image file's JPEG start and end markers at load time.
    """

    name = "mirflickr"
    protocol = "holdout"
    metric_set = "retdm"
    citation = ("Huiskes, M. J. and Lew, M. S. (2008). The MIR Flickr Retrieval Evaluation. ACM MIR 2008; "
                "protocol of Li et al., RETDM, IEEE TNNLS 31(7), 2020.")
    description = "MIRFLICKR-25k: 25,000 Flickr images, 24 potential labels, random 80/20 split (RETDM)"

    def __init__(self, labels: str = "potential", n_images: int = N_IMAGES, verify_images: bool = False):
        self.labels = labels
        self.n_images = n_images
        self.verify_images = verify_images

    @staticmethod
    def image_folder(data_root: Path) -> Path:
        return Path(data_root) / "mirflickr"

    @staticmethod
    def annotation_folder(data_root: Path) -> Path | None:
        found = [Path(data_root) / d for d in ANNOTATION_DIRS if (Path(data_root) / d).is_dir()]
        return found[0] if found else None

    def is_available(self, data_root: Path) -> bool:
        return self.image_folder(data_root).is_dir() and self.annotation_folder(data_root) is not None

    def load(self, data_root: Path) -> MultiLabelData:
        if self.labels not in ("potential", "relevant"):
            raise BenchError(f"mirflickr: labels must be 'potential' or 'relevant', got {self.labels!r}")
        folder = self.annotation_folder(data_root)
        if folder is None:
            raise BenchError(f"{Path(data_root) / ANNOTATION_DIRS[0]}: annotation folder not found (nor "
                             f"{ANNOTATION_DIRS[1]}); {WHERE_TO_GET}")
        names = POTENTIAL if self.labels == "potential" else RELEVANT
        Y = np.zeros((self.n_images, len(names)), dtype=np.uint8)
        for column, label in enumerate(names):
            files = [folder / f"{label}_r1.txt"]
            if self.labels == "potential":
                files = [folder / f"{label}.txt"] + [f for f in files if f.is_file()]
            for path in files:
                Y[self.read_ids(path) - 1, column] = 1
        paths = self.image_paths(self.image_folder(data_root))
        if self.verify_images:
            check_jpeg_files(paths)
        return MultiLabelData(name=self.name, views={"image": ImageView(paths=paths)}, Y=Y, label_names=names,
                              protocol=self.protocol, citation=self.citation, description=self.description)

    def read_ids(self, path: Path) -> np.ndarray:
        """The 1-based image numbers of an annotation file, each checked to be in 1..n_images."""
        if not path.is_file():
            raise BenchError(f"{path}: annotation file not found; {WHERE_TO_GET}")
        ids = []
        for line_no, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit() or not 1 <= int(text) <= self.n_images:
                raise BenchError(f"{path}: line {line_no} is {text!r}; expected an image number in 1..{self.n_images}")
            ids.append(int(text))
        return np.asarray(ids, dtype=np.int64)

    def image_paths(self, folder: Path) -> tuple[Path, ...]:
        return numbered_image_paths(folder, "im{}.jpg", self.n_images, WHERE_TO_GET)
