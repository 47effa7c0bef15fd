"""RETDM: REconstruction regularized Two-way Deep Metric learning, and its ablations (Tables I-IV).

Paper: C. Li, C. Liu, L. Duan, P. Gao, K. Zheng, "Reconstruction Regularized Deep Metric Learning
for Multi-label Image Classification", IEEE Transactions on Neural Networks and Learning Systems
31(7):2294-2303, 2020, arXiv 2007.13547 (text in ``../shared/papers/retdm.txt``). Its equations
(1)-(13) were lost from the text; ``../shared/papers/NOTES.md`` (RETDM) gives the reading followed
here, and every place where that reading is a choice is a constructor argument (below).

Written against the token view of :mod:`bench.tokens`: an image backbone's last map as h*w tokens
(VGG-16: conv5_3, before pool5), or, on a feature dataset, one token per feature view.

The model (names as in the paper; code in :class:`RETDMHead` and the loss functions below)
------------------------------------------------------------------------------------------
* Eq. (2): the image embedding φ(x) ∈ R^512 (:class:`ImageEmbedding`): VGG-16 with its last FC
  layer (fc8) dropped and the second one (fc7) set to 512 units: pool5, torchvision's 7 x 7
  average pool, fc6 (4096 units, ReLU, dropout 0.5, ImageNet weights from the same checkpoint as
  the trunk via :func:`bench.backbones.classifier_state_dict`), then fc7' (4096 -> 512, new). φ is
  fc7's linear output (no ReLU: the embeddings are compared by distance, and a ReLU would pin
  coordinates at 0). Other backbones: mean of the tokens instead of pool5 + 7 x 7 (``image_pool``).
* Eq. (3): the label embedding ψ(y) ∈ R^512: two fully connected layers of 512 units,
  Linear(L, 512) -> ReLU -> Linear(512, 512) (``RETDMHead.label_embed``).
* N_k(i): the k = 10 (``n_neighbours``) nearest *training* label vectors of y_i by Hamming
  distance, computed once per fit on the training part (:meth:`RETDM.setup`,
  :func:`nearest_label_sets`, exact: the Hamming matrix is one matrix product per chunk of rows
  and the k smallest come from ``topk``). Excluded: i itself and every example with y_j = y_i
  (an identical label set is no negative). Ties in distance are broken by the smaller training
  index. Fewer than k candidates (tiny data): the missing slots are masked out everywhere.
* Eq. (4)-(5): d(x, y) = ‖φ(x) - ψ(y)‖₂ (Euclidean), s(x, y) = exp(-d²).
* Eq. (6), way one (:func:`way_one_loss`): -log p of the true pair, p the softmax of the true pair
  among {(x_i, y_i)} ∪ {(x_i, y_j): j ∈ N_k(i)}, plus Σ_j [margin + d(x_i, y_i) - d(x_i, y_j)]_+,
  the penalty on a true distance not below a neighbour's (:func:`pair_softmax_hinge`).
* Eq. (7), way two (:func:`way_two_loss`): the same with ψ(y_i) as the anchor and φ(x_j) of the
  images x_j of the neighbours j ∈ N_k(i) as the negatives. Those images come into the batch
  through the sampler (:meth:`RETDM.train_batch_indices`, :func:`neighbour_batches`): in the
  two-way metric stages a batch is ``batch_size`` anchors, cut from a plain permutation of the
  training part exactly as stage 1 and the BCE ablation cut theirs, followed by
  ``way_two_negatives`` neighbour images per anchor (a random subset of its N_k, drawn afresh
  each epoch; an anchor with fewer valid neighbours has its remaining slots masked out). L_cls,
  way one and L_rec are computed on the anchors only, way two on the anchors against their own
  neighbour images; the neighbour images pass through the image path (their φ) for way two alone.
* Eq. (8): L_metric = L_1 + λ L_2 with λ = 1 (``way_two_weight``; "we simply set" it).
* Eq. (9)-(10): the classification module, one FC layer on φ and a sigmoid per label, binary
  cross-entropy (:func:`classification_loss`); its sigmoid outputs are the prediction.
* Eq. (11)-(12): the reconstruction module, one FC layer from ψ(y) back to y, mean squared error
  (:func:`reconstruction_loss`).
* Eq. (13): L = L_cls + α L_metric + β L_rec (``alpha``, ``beta``). The paper chooses α and β "by
  cross validation" and reports insensitivity over wide ranges (Fig. 5): here α is chosen inside
  each job on the training part's validation carve-out (the class's ``search``, α ∈ {0.1, 0.01,
  0.001} on validation mAP; :mod:`bench.tuning`), never on a test fold; β = 1 (L_rec reaches the
  prediction only through ψ's effect on the metric; docs/methods.md, RETDM, has the validation numbers).
  ``--set alpha=1.0`` runs a fixed α (no search), ``--tune alpha=...,beta=...`` another grid.
  The constructor defaults α = β = 1 are what a fixed run uses.
* Training scheme (Section III, end): (1) fine-tune the classification path alone
  (θ_cnn, θ_cls; α = β = 0); (2) fix θ_cnn, θ_cls and train the label net and metric module
  (θ_dnn, θ_rec) with L; (3) fine-tune everything jointly with L: three :class:`~bench.training.Stage` s
  (:meth:`RETDM.stages`), each with its own SGD (momentum 0.9, weight decay 1e-4, batch 256,
  lr 0.1) and lr schedule: divided by 10 whenever the validation loss saturates, down to 0.01
  (``ReduceLROnPlateau``, ``lr_factor``, ``lr_patience``, ``min_lr``), driven by validation data
  carved out of the training part only. Stage 1 watches the validation L_cls (the loss it
  trains), stages 2 and 3 the validation L.
* Augmentation ([53]): resize, one of the four corner and the centre crops, then the final crop
  (``resize``, ``five_crop``, ``image_size``); test images are resized to ``image_size`` (single crop).

Readings where the text leaves room ([choice] of NOTES.md, or ours; all constructor arguments)
-----------------------------------------------------------------------------------------------
* ``softmax_over="distances"``: "a softmax over these scores" with s = exp(-d²) is read as
  p = s_0 / Σ s = softmax(-d²) (the exponential of Eq. 5 is the softmax's own, as in NCA);
  ``"similarities"`` applies a softmax to the scores s themselves, p = softmax(exp(-d²)) (literal,
  but bounded: -log p >= log(1 + K/e) whatever the distances).
* The hinge of Eqs. (6)-(7) is on the Euclidean distances d of the constraints (4), summed over
  the K negatives, with ``margin=0.0`` (NOTES: "[d(x_i, y_i) - d(x_i, y_j)]_+"); the softmax uses
  the squared distances of Eq. (5).
* ``distinct_neighbours=False``: N_k(i) are k *examples* (so k label vectors, possibly equal to
  one another, and their k images); True: k distinct label sets, each represented by its
  lowest-index training example (on data with few labels, e.g. scene's 5, the example-level
  neighbours are mostly copies of one or two label sets).
* ``way_two_negatives=1``: how many neighbour images per anchor the sampler adds (None: all
  ``n_neighbours``, the full softmax of Eq. 7 over k images). The paper does not say how its
  batches held the neighbour images. Each one adds a plain batch's worth of images to the image
  path's work in the metric stages: at None a joint step at the paper's size would carry 256 x 11
  = 2,816 VGG-16 images of 224 px; at 1 it carries 512. On mnist-mosaic's feature views (fold 0
  of 2, validation carve-out, α = 0.001, batch 32) 1, 2 and all 10 gave validation mAP 0.936,
  0.911 and 0.931: no gain from more. An earlier reading here packed anchors and neighbours into
  one batch of ``batch_size`` images, which at batch 32 on mnist-mosaic's fold 0 filled an epoch
  with 698 image slots (896 in a plain one) over 262 distinct images, 49 % of them taken by the 50
  most frequent, so the classifier trained on a skewed sample in the joint stage (same setting,
  all 10 neighbours: validation mAP 0.872 then, 0.931 with plain batches of anchors).
* Batch losses: L_cls (BCE averaged over labels, PyTorch's ``BCELoss``), way one and L_rec (MSE
  averaged over labels) are averaged over the anchors of the batch, way two over the anchors with
  at least one valid neighbour slot. Validation batches hold validation images only, so the
  validation loss has no way-two term (its negatives are training images); its way-one
  neighbours are the nearest *training* label vectors of each validation label vector.
* Gradient probe: every ``GRAD_PROBE_EVERY`` (10) training steps of the joint stage, the norms of
  the gradients of L_cls and of α L_metric with respect to φ of the batch's images (the image
  path's output; two backward passes through the heads) go into the epoch's history as means:
  ``grad_phi_cls``, ``grad_phi_metric`` and ``grad_share_metric`` = metric / (cls + metric), so a
  run shows when one term swamps the other (β L_rec has no gradient on φ).
* Stage epochs: ``classification_fraction=0.3`` and ``metric_fraction=0.2`` of ``epochs`` for
  stages 1 and 2, the rest for stage 3 (largest-remainder rounding, so they sum to ``epochs``; a
  stage of 0 epochs is skipped); ``epochs=30`` in all ("converges after about 20 epochs", Fig. 6).
  In stage 2 the frozen image path is also kept in eval mode (its BatchNorm statistics and
  dropout fixed: "we fix θ_cnn and θ_cls").
* lr schedule: ``ReduceLROnPlateau(factor=lr_factor=0.1, patience=lr_patience=2,
  min_lr=min_lr=0.01)`` per stage; "until 0.01 or the maximum epoch" is read as an lr floor of
  0.01 within a fixed budget of ``epochs`` (``patience`` adds early stopping on ``monitor``).
  ``val_fraction=0.1`` of the training part is held out for it (``val_fraction=0``: constant lr).
* ``augmentation``: the paper's sizes were lost; ``resize=256``, ``five_crop=240``,
  ``image_size=224`` (VGG-16's input). The five crops are taken from the *resized* image: with
  ``resize=None`` (native size, e.g. ``mnist-mosaic``'s scale defaults) there is no five-crop
  step and the training images are the test images' size (:meth:`RETDM.train_transform`).
* ``image_pool="auto"``: ``"vgg"`` (pool5 + 7 x 7 average + flatten, fc6's input) for a VGG
  backbone, ``"flatten"`` (the M view tokens concatenated) for feature views, ``"mean"`` (mean of
  the tokens) otherwise. ``fc_width=4096`` and ``dropout=0.5`` are VGG's fc6.
* ``grad_clip=1.0``: the gradient norm is clipped at 1 (ours; the paper says nothing). With the
  paper's lr 0.1 and momentum 0.9 on unnormalised 512-d embeddings the squared distances of the
  metric loss diverge within stage 2 (measured on ``mnist-mosaic``'s feature views: loss inf at
  epoch 4 with batch 32, NaN at epoch 7 with batch 256); ``grad_clip=None`` is the text as written.
* ``backbone_lr_mult=1.0`` (one lr for the whole network, as written), ``amp=True`` (bf16
  autocast on CUDA; the distances are computed in float32 outside it).

Ablations (registered, ``ablation_of = "retdm"``)
-------------------------------------------------
* ``retdm_oneway``: "RETDM (one-way)" of Table IV, the metric loss is L_1 alone
  (``way_two_weight=0``; no neighbour images are needed, so its batches are plain ones).
* ``retdm_bce``: the paper's "BCE" row (VGG-16 with binary cross-entropy): the classification
  module alone (``alpha=beta=0``), trained as stage 1 for all ``epochs``.

On the default ``mnist-mosaic`` the dataset's scale defaults give a small CNN from scratch at the
native 56 px, and to RETDM and its ablations (``retdm.``-scoped settings) batches of 32 (the
paper's 256 leave a fold's ~900 training images 4 steps per epoch) and 20 epochs (stages of 6, 4
and 10; at 10 the image path learnt from scratch is still far from trained); ``--set
inputs=features`` trains on its feature views instead (docs/methods.md, RETDM).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import ablation_init
from bench.data import FEATURES, MultiLabelData
from bench.deep import DeepMethod
from bench.errors import BenchError
from bench.image import ImageTransform
from bench.tokens import TokenEncoder
from bench.training import Batch, Stage, full_precision

IMAGE_POOLS = ("auto", "vgg", "mean", "flatten")
SOFTMAX_OVER = ("distances", "similarities")
#: Rows of the Hamming matrix computed at once (bounds the memory of the neighbour search).
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- neighbours
def nearest_label_sets(query: torch.Tensor, reference: torch.Tensor, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of ``reference`` [n, L] to each row of ``query`` [q, L] ({0,1}) by
    Hamming distance, excluding rows with the identical label set; ties go to the smaller index.

    Returns (index [q, k] long, valid [q, k] bool); slots beyond the available candidates are
    index 0 with valid False. Exact: the Hamming distances are integers from one matrix product
    per chunk, ranked by the integer key distance * n + index (unique, so no tie is left to topk).
    """
    q, n, labels = query.shape[0], reference.shape[0], reference.shape[1]
    ref = reference.float()
    order = torch.arange(n, device=ref.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    top_k = min(k, n)
    keys = []
    for start in range(0, q, chunk):
        rows = query[start:start + chunk].float()
        hamming = (rows @ (1 - ref).T + (1 - rows) @ ref.T).round().long()      # [c, n]
        hamming = hamming.masked_fill(hamming == 0, labels + 1)                   # same label set: never
        keys.append((hamming * n + order).topk(top_k, dim=1, largest=False).values)
    key = torch.cat(keys) if keys else torch.zeros(0, top_k, dtype=torch.long, device=ref.device)
    index, valid = key % max(n, 1), key // max(n, 1) <= labels
    if top_k < k:
        pad = (0, k - top_k)
        index, valid = F.pad(index, pad), F.pad(valid, pad, value=False)
    return torch.where(valid, index, torch.zeros_like(index)), valid


def candidate_pool(Y: np.ndarray, distinct: bool = False) -> np.ndarray:
    """The training examples neighbours are drawn from: all of them, or (``distinct``) the
    lowest-index example of each distinct label set."""
    if not distinct:
        return np.arange(len(Y))
    return np.sort(np.unique(np.asarray(Y), axis=0, return_index=True)[1])


def neighbour_batches(neighbours: np.ndarray, valid: np.ndarray, batch_size: int, per_anchor: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of the metric stages: a plain permutation of the training part cut into batches of
    ``batch_size`` anchors (as stage 1 and BCE see it), each batch followed by ``per_anchor``
    neighbour slots per anchor, anchor a's at rows ``A + a * per_anchor + j`` (A anchors): a random
    subset of its valid neighbours, padded with the anchor's own index where it has fewer (those
    slots are masked out by :func:`neighbour_slots`). Only way two reads the neighbour rows."""
    batches = []
    order = rng.permutation(len(neighbours))
    for start in range(0, len(order), batch_size):
        anchors = order[start:start + batch_size]
        slots = np.repeat(anchors[:, None], per_anchor, axis=1)
        for a, anchor in enumerate(anchors):
            candidates = neighbours[anchor][valid[anchor]]
            if per_anchor < len(candidates):
                candidates = rng.choice(candidates, per_anchor, replace=False)
            slots[a, :len(candidates)] = candidates
        batches.append(np.concatenate([anchors, slots.reshape(-1)]).astype(np.int64))
    return batches


def neighbour_slots(valid: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """[A, per_anchor] bool: which neighbour slots of :func:`neighbour_batches` hold a neighbour
    (the first min(per_anchor, valid neighbours of the anchor) of each row)."""
    count = valid.sum(dim=1, keepdim=True).clamp(max=per_anchor)
    return torch.arange(per_anchor, device=valid.device).unsqueeze(0) < count


# ----------------------------------------------------------------------------- network
class ImageEmbedding(nn.Module):
    """Eq. (2): tokens [B, N, D] -> pooling -> fc6 (``fc_width``, ReLU, dropout) -> fc7' -> φ [B, E]."""

    def __init__(self, width: int, grid: tuple[int, int], pool: str, embed_dim: int = 512,
                 fc_width: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.pool, self.grid = pool, tuple(grid)
        n_in = {"vgg": width * 7 * 7, "flatten": width * grid[0] * grid[1], "mean": width}[pool]
        self.fc6 = nn.Linear(n_in, fc_width)
        self.dropout = nn.Dropout(dropout)
        self.fc7 = nn.Linear(fc_width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "vgg":   # torchvision VGG: pool5, then AdaptiveAvgPool2d((7, 7)), flatten
            fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
            x = F.adaptive_avg_pool2d(F.max_pool2d(fmap, 2, ceil_mode=True), (7, 7)).flatten(1)
        elif self.pool == "flatten":
            x = tokens.flatten(1)
        else:
            x = tokens.mean(dim=1)
        return self.fc7(self.dropout(F.relu(self.fc6(x))))


class RETDMHead(nn.Module):
    """φ (Eq. 2), the classification module (Eq. 9), ψ (Eq. 3) and the reconstruction module (Eq. 11).

    ``forward(tokens)`` gives ``logits`` [B, L] and ``phi`` [B, E]; with ``y`` [B, L] also ``psi``
    [B, E] and ``reconstruction`` [B, L]; with ``neighbour_labels`` [B, k, L] also
    ``psi_neighbours`` [B, k, E]."""

    def __init__(self, image_embed: ImageEmbedding, n_labels: int, embed_dim: int = 512, label_hidden: int = 512):
        super().__init__()
        self.image_embed = image_embed
        self.classifier = nn.Linear(embed_dim, n_labels)
        self.label_embed = nn.Sequential(nn.Linear(n_labels, label_hidden), nn.ReLU(),
                                         nn.Linear(label_hidden, embed_dim))
        self.reconstruct = nn.Linear(embed_dim, n_labels)

    def forward(self, tokens: torch.Tensor, y: torch.Tensor | None = None,
                neighbour_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        phi = self.image_embed(tokens)                                   # Eq. (2)
        out = {"logits": self.classifier(phi), "phi": phi}               # Eq. (9), before the sigmoid
        if y is not None:
            psi = self.label_embed(y)                                    # Eq. (3)
            out.update(psi=psi, reconstruction=self.reconstruct(psi))    # Eq. (11)
        if neighbour_labels is not None:
            out["psi_neighbours"] = self.label_embed(neighbour_labels)
        return out

    def image_path(self) -> list[nn.Module]:
        return [self.image_embed, self.classifier]

    def label_path(self) -> list[nn.Module]:
        return [self.label_embed, self.reconstruct]


# ----------------------------------------------------------------------------- losses
def pair_softmax_hinge(d2_true: torch.Tensor, d2_neg: torch.Tensor, mask: torch.Tensor, margin: float = 0.0,
                       softmax_over: str = "distances") -> torch.Tensor:
    """Eqs. (5)-(7) for one anchor per row: -log p(true pair) + Σ_j [margin + d_true - d_j]_+ over the
    valid negatives; averaged over the rows with at least one (0 when there is none).

    ``d2_true`` [R] and ``d2_neg`` [R, K] are squared distances; ``mask`` [R, K] the valid negatives.
    p is the softmax of the true pair among the true and the valid negative pairs of its row, over
    -d² (``"distances"``) or over s = exp(-d²) (``"similarities"``); the hinge uses d = √d²."""
    logits = torch.cat([-d2_true.unsqueeze(1), -d2_neg], dim=1)
    if softmax_over == "similarities":
        logits = logits.exp()
    keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    nll = -torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=1)[:, 0]
    d_true, d_neg = _distance(d2_true), _distance(d2_neg)
    hinge = (F.relu(margin + d_true.unsqueeze(1) - d_neg) * mask).sum(dim=1)
    defined = mask.any(dim=1)
    per_row = torch.where(defined, nll + hinge, torch.zeros_like(nll))
    return per_row.sum() / defined.sum().clamp(min=1)


def way_one_loss(phi: torch.Tensor, psi: torch.Tensor, psi_neighbours: torch.Tensor, mask: torch.Tensor,
                 margin: float = 0.0, softmax_over: str = "distances") -> torch.Tensor:
    """Eq. (6): anchor φ(x_i), true ψ(y_i), negatives ψ(y_j) of its neighbours j ∈ N_k(i)."""
    d2_true = (phi - psi).pow(2).sum(-1)
    d2_neg = (phi.unsqueeze(1) - psi_neighbours).pow(2).sum(-1)
    return pair_softmax_hinge(d2_true, d2_neg, mask, margin, softmax_over)


def way_two_loss(psi: torch.Tensor, phi: torch.Tensor, phi_neighbours: torch.Tensor, mask: torch.Tensor,
                 margin: float = 0.0, softmax_over: str = "distances") -> torch.Tensor:
    """Eq. (7): anchor ψ(y_i), true φ(x_i), negatives φ(x_j) [B, K, E] of images of its neighbours
    j ∈ N_k(i) (the sampler's neighbour slots, ``mask`` [B, K] the filled ones)."""
    d2_true = (psi - phi).pow(2).sum(-1)
    d2_neg = (psi.unsqueeze(1) - phi_neighbours).pow(2).sum(-1)
    return pair_softmax_hinge(d2_true, d2_neg, mask, margin, softmax_over)


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (10): binary cross-entropy of σ(logits), averaged over labels and images."""
    return F.binary_cross_entropy_with_logits(logits, y)


def reconstruction_loss(reconstruction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (12): mean squared error between the reconstruction of y and y."""
    return F.mse_loss(reconstruction, y)


def _distance(d2: torch.Tensor) -> torch.Tensor:
    """√d² with a finite gradient at 0."""
    return d2.clamp(min=1e-12).sqrt()


def stage_epochs(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``epochs`` by ``fractions`` (summing to 1) with largest-remainder rounding (ties: earlier stage)."""
    raw = [epochs * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[:epochs - sum(counts)]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------- the method
class RETDM(DeepMethod):
    """RETDM (Li et al., IEEE TNNLS 2020): see the module docstring for the equations and readings."""

    name = "retdm"
    #: α and β "are chosen by cross validation" (Section IV): in each job, on the training part's
    #: validation carve-out (:mod:`bench.tuning`); ``--set alpha=...`` fixes α, ``--tune`` changes the grid.
    search: ClassVar[dict[str, tuple]] = {"alpha": (0.1, 0.01, 0.001)}
    #: Training steps between two gradient probes (:meth:`_probe`).
    GRAD_PROBE_EVERY: ClassVar[int] = 10
    citation = ("C. Li, C. Liu, L. Duan, P. Gao, K. Zheng. Reconstruction Regularized Deep Metric Learning "
                "for Multi-label Image Classification. IEEE TNNLS 31(7):2294-2303, 2020")

    def __init__(self, backbone: str = "vgg16", pretrained: bool | str = True, image_size: int | None = 224,
                 resize: int | None = 256, five_crop: int | None = 240, flip: bool = True, inputs: str = "auto",
                 width: int | None = None, image_pool: str = "auto", fc_width: int = 4096, dropout: float = 0.5,
                 embed_dim: int = 512, label_hidden: int = 512, n_neighbours: int = 10,
                 distinct_neighbours: bool = False, way_two_negatives: int | None = 1,
                 alpha: float = 1.0, beta: float = 1.0, way_two_weight: float = 1.0, margin: float = 0.0,
                 softmax_over: str = "distances", classification_fraction: float = 0.3,
                 metric_fraction: float = 0.2, epochs: int = 30, batch_size: int = 256, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 1e-4, lr_factor: float = 0.1, lr_patience: int = 2,
                 min_lr: float = 0.01, backbone_lr_mult: float = 1.0, grad_clip: float | None = 1.0,
                 val_fraction: float = 0.1,
                 patience: int | None = None, monitor: str = "val_mAP", amp: bool = True,
                 steps_per_epoch: int | None = None, num_workers: int | None = None, device: str = "auto",
                 random_state: int = 0, verbose: bool = False):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.resize = resize
        self.five_crop = five_crop
        self.flip = flip
        self.inputs = inputs
        self.width = width
        self.image_pool = image_pool
        self.fc_width = fc_width
        self.dropout = dropout
        self.embed_dim = embed_dim
        self.label_hidden = label_hidden
        self.n_neighbours = n_neighbours
        self.distinct_neighbours = distinct_neighbours
        self.way_two_negatives = way_two_negatives
        self.alpha = alpha
        self.beta = beta
        self.way_two_weight = way_two_weight
        self.margin = margin
        self.softmax_over = softmax_over
        self.classification_fraction = classification_fraction
        self.metric_fraction = metric_fraction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.min_lr = min_lr
        self.backbone_lr_mult = backbone_lr_mult
        self.grad_clip = grad_clip
        self.val_fraction = val_fraction
        self.patience = patience
        self.monitor = monitor
        self.amp = amp
        self.steps_per_epoch = steps_per_epoch
        self.num_workers = num_workers
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -------------------------------------------------------------- set-up and network
    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> RETDM:
        self._validated = val is not None or bool(self.val_fraction)   # the schedule needs validation data
        return super().fit(train, val)

    def setup(self, train: MultiLabelData) -> None:
        """Hook 1: N_k(i) of every training example, once per fit, on the training part only."""
        self.train_labels_ = torch.as_tensor(train.Y, dtype=torch.float32, device=self.device_)
        self.neighbour_pool_ = torch.as_tensor(candidate_pool(train.Y, bool(self.distinct_neighbours)),
                                               device=self.device_)
        self.neighbours_, self.neighbour_valid_ = self.nearest_training_labels(self.train_labels_)
        self._neighbours_np = self.neighbours_.cpu().numpy()
        self._valid_np = self.neighbour_valid_.cpu().numpy()
        self._probe_step, self._probes = 0, {}

    def nearest_training_labels(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N_k of label vectors ``y`` [B, L] among the training examples (indices into the
        training part, valid mask), by :func:`nearest_label_sets` over the candidate pool."""
        pool = self.neighbour_pool_
        index, valid = nearest_label_sets(y, self.train_labels_[pool], int(self.n_neighbours))
        return pool[index], valid

    def build_head(self, encoder: TokenEncoder, n_labels: int) -> RETDMHead:
        pool = self.image_pool
        if pool == "auto":
            pool = ("flatten" if encoder.kind == FEATURES else
                    "vgg" if str(self.backbone).startswith("vgg") else "mean")
        image_embed = ImageEmbedding(encoder.width, encoder.grid, pool, int(self.embed_dim), int(self.fc_width),
                                     float(self.dropout))
        if encoder.kind != FEATURES and pool == "vgg":
            self._load_fc6(image_embed)
        return RETDMHead(image_embed, n_labels, int(self.embed_dim), int(self.label_hidden))

    def _load_fc6(self, image_embed: ImageEmbedding) -> None:
        """VGG's ImageNet fc6 (``classifier.0``) into φ's fc6, when the trunk is pretrained and it fits."""
        from bench.backbones import classifier_state_dict

        state = classifier_state_dict(str(self.backbone), self.pretrained)
        weight, bias = state.get("classifier.0.weight"), state.get("classifier.0.bias")
        if weight is not None and tuple(weight.shape) == tuple(image_embed.fc6.weight.shape):
            with torch.no_grad():
                image_embed.fc6.weight.copy_(weight)
                image_embed.fc6.bias.copy_(bias)

    def train_transform(self, native: tuple[int, int] | None = None) -> ImageTransform:
        """Resize -> one of the five crops -> random crop; without ``resize`` no five-crop step."""
        if self.resize is None:
            from bench.image import train_transform

            return train_transform(self._image_side(native), None, self.flip, None)
        return super().train_transform(native)

    # -------------------------------------------------------------- forward passes and losses
    def forward_train(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Hook 2: the image path on every image, ψ of its labels and of its neighbours' labels.

        Training batches (``model.training``; indices into the training part) take N_k from the
        table of :meth:`setup`; in the two-way metric stages a batch is A anchors followed by their
        neighbour slots (:func:`neighbour_batches`): the outputs keep the anchors' rows, and the
        slots' φ become ``phi_neighbours`` [A, K, E] with ``neighbour_image_mask`` (way two only).
        Validation batches get the nearest *training* label vectors of their own labels (by label
        distance; their indices are positions in the validation part, not the training table)."""
        if not model.training:
            index, valid = self.nearest_training_labels(batch.y)
            out = model(batch.inputs, y=batch.y, neighbour_labels=self.train_labels_[index])
            out["neighbour_mask"] = valid
            return out
        per_anchor = self._per_anchor() if self._two_way() and self._metric_stage() else 0
        n_anchors = len(batch.index) // (1 + per_anchor)
        out = model(batch.inputs, y=batch.y, neighbour_labels=self.train_labels_[self.neighbours_[batch.index]])
        phi = self._phi_batch = out["phi"]      # every image's φ, the anchors' and the neighbours' (the probe's)
        out = {k: v[:n_anchors] for k, v in out.items()}
        valid = self.neighbour_valid_[batch.index[:n_anchors]]
        out["neighbour_mask"] = valid
        if per_anchor:
            out["phi_neighbours"] = phi[n_anchors:].reshape(n_anchors, per_anchor, phi.shape[-1])
            out["neighbour_image_mask"] = neighbour_slots(valid, per_anchor)
        return out

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. (13) on the batch's anchors (the neighbour rows serve way two only), and every
        :attr:`GRAD_PROBE_EVERY` steps the gradient probe (:meth:`_probe`)."""
        with self.autocast():
            outputs = self.forward_train(self.model_, batch)
        outputs = full_precision(outputs)
        total, terms = self.compute_loss(outputs, batch.y[:outputs["logits"].shape[0]])
        self._probe(terms)
        self._phi_batch = None
        return total, terms

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. (13): L_cls + α (L_1 + λ L_2) + β L_rec; L_2 where the batch holds neighbour images."""
        cls = classification_loss(outputs["logits"], y)                                        # Eq. (10)
        terms = {"cls": cls}
        total = cls
        if self.alpha:
            metric = way_one = way_one_loss(outputs["phi"], outputs["psi"], outputs["psi_neighbours"],
                                            outputs["neighbour_mask"], self.margin, self.softmax_over)  # Eq. (6)
            terms["way_one"] = way_one
            if "phi_neighbours" in outputs:
                way_two = way_two_loss(outputs["psi"], outputs["phi"], outputs["phi_neighbours"],
                                       outputs["neighbour_image_mask"], self.margin, self.softmax_over)  # Eq. (7)
                metric = way_one + self.way_two_weight * way_two                               # Eq. (8)
                terms["way_two"] = way_two
            terms["metric"] = metric
            total = total + self.alpha * metric
        if self.beta:
            rec = reconstruction_loss(outputs["reconstruction"], y)                            # Eq. (12)
            terms["rec"] = rec
            total = total + self.beta * rec
        return total, terms

    def _probe(self, terms: dict[str, torch.Tensor]) -> None:
        """The gradient norms of L_cls and of α L_metric with respect to the image path's output φ
        of every image of the batch (anchors and neighbour images), every :attr:`GRAD_PROBE_EVERY`
        training steps where the image path trains (the joint stage); β L_rec has none there (it
        reads ψ only). Two backward passes through the heads only, not through the CNN."""
        phi = getattr(self, "_phi_batch", None)
        if not (self.alpha and phi is not None and phi.requires_grad):
            return
        self._probe_step += 1
        if (self._probe_step - 1) % self.GRAD_PROBE_EVERY:
            return
        norms = {}
        for name, term in (("cls", terms["cls"]), ("metric", self.alpha * terms["metric"])):
            (grad,) = torch.autograd.grad(term, [phi], retain_graph=True, allow_unused=True)
            norms[name] = 0.0 if grad is None else float(grad.float().norm())
        share = norms["metric"] / max(norms["cls"] + norms["metric"], 1e-12)
        for key, value in (("grad_phi_cls", norms["cls"]), ("grad_phi_metric", norms["metric"]),
                           ("grad_share_metric", share)):
            self._probes.setdefault(key, []).append(value)

    def epoch_callbacks(self):
        """The epoch's probe means go into its history record (``grad_phi_cls``, ``grad_phi_metric``,
        ``grad_share_metric`` = metric / (cls + metric))."""
        def write(record: dict) -> None:
            record.update({k: float(np.mean(v)) for k, v in self._probes.items()})
            self._probes = {}

        return [write, *super().epoch_callbacks()]

    def classification_stage_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage 1: L_cls of the classification path alone (α = β = 0)."""
        with self.autocast():
            logits = self.forward_eval(self.model_, batch)["logits"]
        cls = classification_loss(logits.float(), batch.y)
        return cls, {"cls": cls}

    def metric_stage_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage 2: L with the image path fixed, in eval mode (no BatchNorm update, no dropout)."""
        for module in self._image_modules():
            module.eval()
        return self.training_loss(batch)

    # -------------------------------------------------------------- stages, schedule, sampler
    def stages(self) -> list[Stage]:
        """Hook 3: (1) classification path, (2) label path with the image path frozen, (3) all."""
        image = [p for m in self._image_modules() for p in m.parameters()]
        label = [p for m in self.head_.label_path() for p in m.parameters()]
        plan = [("classification", image, self.classification_stage_loss, "val_cls"),
                ("metric", label, self.metric_stage_loss, "val_loss"),
                ("joint", image + label, self.training_loss, "val_loss")]
        stages = []
        for (name, params, loss, monitor), epochs in zip(plan, self._stage_epochs(), strict=True):
            if epochs == 0:
                continue
            optimizer = self._optimizer(params)
            stages.append(Stage(name, epochs=epochs, optimizer=optimizer, loss=loss, trainable=params,
                                scheduler=self._plateau(optimizer), scheduler_monitor=monitor if self._validated
                                else None, patience=self.patience))
        return stages

    def train_batch_indices(self, n: int, epoch: int) -> list[np.ndarray]:
        """Hook 7: plain batches in stage 1 (and without way two); in the two-way metric stages the
        same plain batches of anchors, each followed by its anchors' neighbour slots
        (:func:`neighbour_batches`)."""
        if not (self._two_way() and self._metric_stage()):
            return super().train_batch_indices(n, epoch)
        rng = np.random.default_rng([int(self.random_state or 0), int(epoch)])
        return neighbour_batches(self._neighbours_np, self._valid_np, int(self.batch_size), self._per_anchor(), rng)

    def _metric_stage(self) -> bool:
        # The loop freezes every parameter a stage does not train: the label path trains exactly in
        # the metric stages (whatever epoch they start at, early stopping included).
        return any(p.requires_grad for m in self.head_.label_path() for p in m.parameters())

    def _per_anchor(self) -> int:
        return int(self.n_neighbours if self.way_two_negatives is None else self.way_two_negatives)

    def _stage_epochs(self) -> list[int]:
        if not (self.alpha or self.beta):        # nothing would train the label path: BCE alone
            return [int(self.epochs), 0, 0]
        rest = 1.0 - self.classification_fraction - self.metric_fraction
        return stage_epochs(int(self.epochs), (self.classification_fraction, self.metric_fraction, rest))

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.SGD:
        """SGD (momentum, weight decay) on ``params``; a pretrained backbone at lr * backbone_lr_mult."""
        backbone = {id(p) for p in self.encoder_.backbone_parameters()}
        groups = [{"params": [p for p in params if id(p) not in backbone], "lr": self.lr}]
        trunk = [p for p in params if id(p) in backbone]
        if trunk:
            groups.append({"params": trunk, "lr": self.lr * self.backbone_lr_mult})
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def _plateau(self, optimizer: torch.optim.Optimizer):
        """lr / 10 when the validation loss saturates, down to ``min_lr`` (scaled per group)."""
        if not self._validated:
            return None
        floors = [g["lr"] * self.min_lr / self.lr for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=self.lr_factor,
                                                          patience=int(self.lr_patience), min_lr=floors)

    def _image_modules(self) -> list[nn.Module]:
        return [self.encoder_, *self.head_.image_path()]

    def _two_way(self) -> bool:
        return bool(self.alpha) and bool(self.way_two_weight)

    def check_data(self, data: MultiLabelData, n_train: int) -> None:
        """Run by :func:`bench.params.validate` before any job: N_k(i) needs k other training examples."""
        if n_train is not None and self.n_neighbours >= n_train:
            raise BenchError(f"method {self.name!r}: n_neighbours must be smaller than the smallest training "
                             f"part ({n_train} examples on dataset {data.name!r}), got {self.n_neighbours!r}")

    def _check_params(self) -> None:
        super()._check_params()
        where = f"method {self.name!r}"
        if self.alpha < 0 or self.beta < 0 or self.way_two_weight < 0:
            raise BenchError(f"{where}: alpha, beta and way_two_weight must be >= 0, got {self.alpha!r}, "
                             f"{self.beta!r}, {self.way_two_weight!r}")
        for name in ("n_neighbours", "embed_dim", "label_hidden", "fc_width", "lr_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "lr_patience" else 1):
                raise BenchError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.way_two_negatives is not None and not (isinstance(self.way_two_negatives, int)
                                                       and self.way_two_negatives >= 1):
            raise BenchError(f"{where}: way_two_negatives must be a positive integer or None, "
                             f"got {self.way_two_negatives!r}")
        fractions = (self.classification_fraction, self.metric_fraction)
        if not all(0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
            raise BenchError(f"{where}: classification_fraction and metric_fraction must be in [0, 1] with a sum "
                             f"<= 1, got {self.classification_fraction!r} and {self.metric_fraction!r}")
        if self.image_pool not in IMAGE_POOLS:
            raise BenchError(f"{where}: image_pool must be one of {', '.join(IMAGE_POOLS)}, got {self.image_pool!r}")
        if self.softmax_over not in SOFTMAX_OVER:
            raise BenchError(f"{where}: softmax_over must be one of {', '.join(SOFTMAX_OVER)}, "
                             f"got {self.softmax_over!r}")
        if not (0 < self.min_lr <= self.lr and 0 < self.lr_factor < 1):
            raise BenchError(f"{where}: need 0 < min_lr <= lr and 0 < lr_factor < 1, got min_lr={self.min_lr!r}, "
                             f"lr={self.lr!r}, lr_factor={self.lr_factor!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise BenchError(f"{where}: grad_clip must be positive or None, got {self.grad_clip!r}")
        if not 0 <= self.dropout < 1:
            raise BenchError(f"{where}: dropout must be in [0, 1), got {self.dropout!r}")


# ----------------------------------------------------------------------------- ablations
class RETDMOneWay(RETDM):
    """Table IV "RETDM (one-way)": the metric loss is way one alone (L_metric = L_1)."""

    name = "retdm_oneway"
    ablation_of = "retdm"
    citation = ("C. Li, C. Liu, L. Duan, P. Gao, K. Zheng. Reconstruction Regularized Deep Metric Learning "
                "for Multi-label Image Classification. IEEE TNNLS 31(7):2294-2303, 2020; ablation: RETDM "
                "(one-way), Table IV")
    __init__ = ablation_init(RETDM, {"way_two_weight": 0.0})


class RETDMBCE(RETDM):
    """The paper's "BCE" row: the classification module alone (VGG-16 + FC + sigmoid, BCE)."""

    name = "retdm_bce"
    ablation_of = "retdm"
    citation = ("C. Li, C. Liu, L. Duan, P. Gao, K. Zheng. Reconstruction Regularized Deep Metric Learning "
                "for Multi-label Image Classification. IEEE TNNLS 31(7):2294-2303, 2020; ablation: BCE "
                "(classification module alone), Tables I-III")
    __init__ = ablation_init(RETDM, {"alpha": 0.0, "beta": 0.0})
