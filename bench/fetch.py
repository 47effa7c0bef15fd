"""``bench fetch DATASET``: download a dataset's public archives, verify their checksums, extract.

A dataset plug-in that has a public download declares it with a classmethod ``archives()``
returning :class:`Archive` records (URL, MD5, file name, and the folder under the data root to
extract into). The download and the MD5 check are torchvision's own
(:func:`torchvision.datasets.utils.download_and_extract_archive`, which ``VOCDetection`` uses);
an archive already present with the right checksum is not downloaded again. Any failure (no
network, a checksum mismatch, a bad archive) is one :class:`~bench.errors.BenchError` line naming
the URL or file.

This module also holds :func:`check_jpeg_files`, the cheap integrity check of image files that
``bench fetch`` runs after extracting and that image loaders offer as ``verify_images=True``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

from bench import plugins
from bench.errors import BenchError

log = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
#: Bytes at the end of a file searched for the end-of-image marker: encoders may pad after it,
#: and the marker cannot occur inside entropy-coded data (0xFF is stuffed there as 0xFF00).
JPEG_TAIL_BYTES = 1024


@dataclass(frozen=True)
class Archive:
    """One public archive of a dataset: where to get it and how to check it."""

    url: str
    md5: str
    filename: str
    subdir: str = ""  # extracted under <data root>/<subdir>


def fetchable(cls: type) -> bool:
    """Whether ``bench fetch`` can download the dataset (it declares public archives)."""
    return hasattr(cls, "archives")


def files_hint(name: str, cls: type) -> str:
    """Where a dataset's absent files come from: ``bench fetch`` or the docs' layouts."""
    return f"`bench fetch {name}`" if fetchable(cls) else "docs/datasets.md, 'Datasets on disk'"


def archives_of(name: str) -> tuple[Archive, ...]:
    """The archives a dataset plug-in declares; an error for one without a public download."""
    cls = plugins.get("datasets", name)
    if cls.embedded:
        raise BenchError(f"dataset {name!r} is embedded (built from data a dependency ships); nothing to fetch")
    archives = cls.archives() if hasattr(cls, "archives") else ()
    if not archives:
        raise BenchError(f"dataset {name!r} has no public download with a checksum; place its files "
                         "under the data root by hand (docs/datasets.md, 'Datasets on disk')")
    return tuple(archives)


def fetch(name: str, data_root: Path, *, keep_archives: bool = True) -> list[Path]:
    """Download, verify (MD5) and extract every archive of ``name`` under ``data_root``."""
    data_root = Path(data_root)
    extracted = []
    for archive in archives_of(name):
        target = data_root / archive.subdir
        log.info("fetching %s into %s", archive.url, target)
        with _tidied_on_failure(target, target / archive.filename):
            _download(archive, target, data_root, keep_archives)
        extracted.append(target)
    return extracted


@contextlib.contextmanager
def _tidied_on_failure(target: Path, archive_path: Path):
    """A failed fetch leaves nothing behind that it made: the folders it created (an empty data
    root, offline), and the archive file where none was there before (a partial download). Files
    that were there stay."""
    created = [folder for folder in (target, *target.parents) if not folder.exists()]
    had_archive = archive_path.exists()
    try:
        yield
    except BaseException:
        if not had_archive:
            archive_path.unlink(missing_ok=True)
        for folder in created:  # deepest first; one that holds anything now is kept
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _download(archive: Archive, target: Path, data_root: Path, keep_archives: bool) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(archive.url, download_root=target, extract_root=target,
                                     filename=archive.filename, md5=archive.md5,
                                     remove_finished=not keep_archives)
    except RuntimeError as exc:  # torchvision's message for a checksum mismatch
        raise BenchError(f"{target / archive.filename}: download from {archive.url} failed its MD5 "
                         f"check (expected {archive.md5}): {exc}") from None
    except URLError as exc:  # offline, DNS, connection refused
        raise BenchError(f"cannot download {archive.url} ({exc.reason}); are you offline? Put the "
                         f"files under {data_root} by hand (docs/datasets.md, 'Datasets on disk')") from None
    except OSError as exc:  # disk full, no permission: writing or extracting, not the network
        raise BenchError(f"{target / archive.filename}: cannot write or extract ({exc})") from None
    except Exception as exc:  # a corrupt archive: tarfile/zipfile errors
        raise BenchError(f"{target / archive.filename}: cannot extract ({type(exc).__name__}: {exc})") from None


def check_jpeg_files(paths: Iterable[Path]) -> None:
    """Raise a one-line error at the first file that is missing or not a complete JPEG.

    Reads two bytes at the start and at most :data:`JPEG_TAIL_BYTES` at the end of each file (the
    start-of-image and end-of-image markers), which catches truncated downloads and non-JPEG files
    without decoding pixels.
    """
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - JPEG_TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            raise BenchError(f"{path}: image file not found") from None
        if head != JPEG_START:
            raise BenchError(f"{path}: not a JPEG file (no start-of-image marker)")
        searched = tail if size > JPEG_TAIL_BYTES else tail[2:]  # not the start marker's bytes
        if JPEG_END not in searched:
            raise BenchError(f"{path}: truncated JPEG (no end-of-image marker); download it again")
