"""Image decoding, the papers' augmentations and the DataLoader of every image method.

Images travel through the loader as ``uint8`` tensors ``[3, H, W]`` (4x less to copy and to pin
than float32); the conversion to float and the backbone's normalisation happen on the device
(:func:`to_model_input`), where they are nearly free. Decoding (``torchvision.io.decode_image``)
and augmentation run in the DataLoader's worker processes.

Transforms
----------
:class:`ImageTransform` is a plain, hashable description (its :meth:`~ImageTransform.describe`
string is part of cache keys): ``resize`` (square side, the image is warped to
``resize x resize`` as ML-GCN's ``Resize((s, s))`` does), then optionally one of the ``five_crop``
crops (the four corners and the centre, one drawn at random per image), then a ``crop`` (random
when training, centred otherwise), then an optional random horizontal flip. The papers' recipes:

* DER, CMSG (ML-GCN style): train ``resize=512, crop=448, flip``; test ``resize=448``;
* RETDM: "resized to R, then cropped at four corners and the center; finally the cropped images
  are further cropped to S" (the sizes were lost from the text): ``resize=R, five_crop=C, crop=S``;
  reading: each time an image is drawn, one of its five crops is chosen uniformly (over the epochs
  the model sees all five, as a five-fold expanded set would show them);
* a frozen feature extractor (Order-Free RNN, :mod:`bench.image_features`): ``resize=s`` only.

``train_transform(image_size, resize, flip, five_crop)`` and ``test_transform(image_size)`` build
them from a method's constructor arguments; ``image_size=None`` keeps an in-memory image at its
native size (the default dataset's 56 x 56 canvases need no resampling).

Batches
-------
The loader yields ``(images uint8 [B, 3, h, w], labels [B, L], index long [B])``, ``index`` being
each image's position in the view (the training loop's :class:`~bench.training.Batch` carries it,
so a method can look up per-example data such as a sample's neighbours). Which examples form each
batch is decided by an :class:`IndexBatches` (a batch sampler filled anew every epoch), so a method
can compose its own batches (RETDM draws images that carry a sample's neighbour labels).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.data import ImageView
from bench.errors import BenchError


# ----------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class ImageTransform:
    """resize (square warp) -> one of the five crops (random) -> crop (random if ``random_crop``,
    else centred) -> random h-flip.

    Operates on ``uint8`` tensors ``[C, H, W]``; each step is skipped when its size is ``None``.
    Randomness comes from torch's global generator, which the loader seeds per worker.
    """

    resize: int | None = None
    crop: int | None = None
    random_crop: bool = False
    flip: bool = False
    five_crop: int | None = None

    def __post_init__(self):
        for name in ("resize", "five_crop", "crop"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise BenchError(f"image transform: {name} must be a positive integer or None, got {value!r}")
        sizes = [(n, getattr(self, n)) for n in ("resize", "five_crop", "crop") if getattr(self, n) is not None]
        for (outer, a), (inner, b) in zip(sizes, sizes[1:], strict=False):
            if b > a:
                raise BenchError(f"image transform: {inner} {b} is larger than {outer} {a}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if self.resize is not None and tuple(img.shape[-2:]) != (self.resize, self.resize):
            img = TF.resize(img, [self.resize, self.resize], antialias=True)
        if self.five_crop is not None:
            self._check_fits(self.five_crop, img, "five_crop")
            # torchvision's order: top-left, top-right, bottom-left, bottom-right, centre
            img = TF.five_crop(img, [self.five_crop, self.five_crop])[int(torch.randint(0, 5, ()).item())]
        if self.crop is not None:
            self._check_fits(self.crop, img, "crop")
            h, w = img.shape[-2:]
            if self.random_crop:
                top = int(torch.randint(0, h - self.crop + 1, ()).item())
                left = int(torch.randint(0, w - self.crop + 1, ()).item())
                img = TF.crop(img, top, left, self.crop, self.crop)
            else:
                img = TF.center_crop(img, [self.crop, self.crop])
        if self.flip and bool(torch.rand(()) < 0.5):
            img = TF.horizontal_flip(img)
        return img

    @staticmethod
    def _check_fits(size: int, img: torch.Tensor, name: str) -> None:
        h, w = img.shape[-2:]
        if size > min(h, w):
            raise BenchError(f"image transform: {name} {size} exceeds the image size {h}x{w}; set a larger resize")

    def output_size(self, native: tuple[int, int] | None) -> tuple[int, int] | None:
        """The (H, W) this transform produces from images of size ``native`` (None: unknown)."""
        if self.crop is not None:
            return (self.crop, self.crop)
        if self.five_crop is not None:
            return (self.five_crop, self.five_crop)
        if self.resize is not None:
            return (self.resize, self.resize)
        return native

    def describe(self) -> str:
        """A stable one-line description, used in cache keys and logs."""
        crop = "none" if self.crop is None else f"{'random' if self.random_crop else 'center'}{self.crop}"
        five = f"five_crop={self.five_crop}," if self.five_crop is not None else ""
        return f"resize={self.resize or 'none'},{five}crop={crop},flip={'yes' if self.flip else 'no'}"


def train_transform(image_size: int | None, resize: int | None = None, flip: bool = True,
                    five_crop: int | None = None) -> ImageTransform:
    """Training augmentation: resize to ``resize`` (if given), one of the ``five_crop`` crops (if
    given), random crop ``image_size``, flip.

    Without ``resize`` (and ``five_crop``) the image is resized straight to ``image_size`` (no crop)."""
    if resize is None and five_crop is None:
        return ImageTransform(resize=image_size, flip=flip)
    return ImageTransform(resize=resize, five_crop=five_crop, crop=image_size, random_crop=True, flip=flip)


def test_transform(image_size: int | None) -> ImageTransform:
    """Evaluation: the whole image resized to ``image_size`` (ML-GCN's test transform)."""
    return ImageTransform(resize=image_size)


# ----------------------------------------------------------------------------- decoding
def to_chw_rgb(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An HW / HWC (1, 3 or 4 channels) uint8 image -> uint8 tensor [3, H, W]."""
    t = torch.as_tensor(np.asarray(image))
    if t.dtype != torch.uint8:
        raise BenchError(f"image arrays must be uint8, got {t.dtype}")
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise BenchError(f"image arrays must be [H, W] or [H, W, C] with C in 1/3/4, got {tuple(t.shape)}")
    t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3].contiguous()


def decode_file(path: Path | str) -> torch.Tensor:
    """Decode a JPEG/PNG/GIF/WebP file to uint8 [3, H, W] (grayscale and RGBA become RGB)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    if not Path(path).is_file():
        raise BenchError(f"image file {path} does not exist")
    try:
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec, which needs system FFmpeg
        # libraries; the bundled libjpeg-turbo/libpng decoders still work and need nothing else.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise BenchError(f"image file {path} cannot be decoded ({' '.join(str(exc).split())[:120]})") from None


#: The longest side, in pixels, of the image thumbnails a job stores with its class maps.
THUMBNAIL_SIDE = 224


def thumbnails(view: ImageView, side: int = THUMBNAIL_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``view`` as RGB uint8 [k, H, W, 3], each scaled down (antialiased) so that its
    longest side is at most ``side``, and their sizes int32 [k, 2] (H, W): images of different
    sizes are padded with black at the bottom and right to the largest."""
    from torchvision.transforms.v2 import functional as TF

    images = []
    for i in range(len(view)):
        image = to_chw_rgb(view.array[i]) if view.array is not None else decode_file(view.paths[i])
        h, w = image.shape[-2:]
        if max(h, w) > side:
            scale = side / max(h, w)
            image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
        images.append(image.permute(1, 2, 0).numpy())
    sizes = np.array([image.shape[:2] for image in images], dtype=np.int32).reshape(-1, 2)
    out = np.zeros((len(images), *sizes.max(axis=0, initial=1), 3), dtype=np.uint8)
    for n, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
        out[n, :h, :w] = image
    return out, sizes


class ImageSet(Dataset):
    """Indexable (image uint8 [3, h, w], labels float32 [L]) pairs of an :class:`ImageView`, and
    the item's index too with ``with_index=True``.

    ``Y=None`` gives an empty label vector (prediction). In-memory arrays are sliced per item;
    file paths are decoded on access, i.e. inside the DataLoader workers.
    """

    def __init__(self, view: ImageView, Y: np.ndarray | None, transform: ImageTransform, with_index: bool = False):
        self.view = view
        self.Y = None if Y is None else torch.as_tensor(np.asarray(Y, dtype=np.float32))
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int):
        if self.view.array is not None:
            img = to_chw_rgb(self.view.array[i])
        else:
            img = decode_file(self.view.paths[i])
        y = self.Y[i] if self.Y is not None else torch.empty(0)
        if self.with_index:
            return self.transform(img), y, i
        return self.transform(img), y


class IndexBatches:
    """A batch sampler whose batches (lists of indices) are set before each pass over the loader.

    A DataLoader iterates its batch sampler anew each time it is iterated (with persistent
    workers too), so one loader serves every epoch, each with the batches the training loop drew."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return (np.asarray(b).tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_num_workers(view: ImageView) -> int:
    """Worker processes for decoding: none for small in-memory arrays (a process costs more than
    slicing), otherwise up to 8 (capped by the CPUs this process may use)."""
    if view.array is not None:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy/random follow from it, so that a
    # run's augmentations depend only on the seed, not on how many workers there are per process.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


class _Loader(DataLoader):
    """A DataLoader whose workers' one-line errors stay one line. torch re-raises an exception of a
    worker in this process with its whole traceback as the message ("Caught BenchError in
    DataLoader worker process 0. Original Traceback ..."); the worker's own message is its last line."""

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except BenchError as exc:
                raise BenchError(worker_message(str(exc))) from None
            yield batch


def worker_message(text: str) -> str:
    """The message a DataLoader worker raised, from torch's re-raised text (``text`` itself when it
    is not one of those)."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split("BenchError: ", 1)[1] if "BenchError: " in last else last.strip()


def make_loader(view: ImageView, Y: np.ndarray | None, transform: ImageTransform, *, batch_size: int = 1,
                shuffle: bool = False, seed: int = 0, num_workers: int | None = None, pin_memory: bool = False,
                drop_last: bool = False, batch_sampler: IndexBatches | None = None) -> DataLoader:
    """A DataLoader of (uint8 images [B, 3, h, w], labels [B, L]); decoding and augmentation in
    ``num_workers`` processes (None: :func:`default_num_workers`), pinned memory for fast,
    asynchronous host-to-GPU copies. With a ``batch_sampler`` (which then decides batch size and
    order) the batches also carry the images' indices: (images, labels, index [B])."""
    workers = default_num_workers(view) if num_workers is None else int(num_workers)
    generator = torch.Generator().manual_seed(int(seed))
    common = dict(num_workers=workers, pin_memory=pin_memory, generator=generator, worker_init_fn=_seed_worker,
                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    if batch_sampler is not None:
        return _Loader(ImageSet(view, Y, transform, with_index=True), batch_sampler=batch_sampler, **common)
    return _Loader(ImageSet(view, Y, transform), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                   **common)


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, 3, H, W] (possibly pinned) -> normalised float32 on ``device``.

    The copy is non-blocking, so it overlaps with the previous step's GPU work when pinned."""
    x = images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.float().div_(255.0)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def native_size(view: ImageView) -> tuple[int, int] | None:
    """(H, W) of an in-memory image view; None for files (sizes vary)."""
    return tuple(view.array.shape[1:3]) if view.array is not None else None
