"""DER: Disentangling, Embedding and Ranking label cues, and its ablations (Tables IV and V).

Paper: Z.-M. Chen, Q. Cui, X.-S. Wei, X. Jin & Y. Guo, "Disentangling, Embedding and Ranking Label
Cues for Multi-Label Image Recognition", IEEE Transactions on Multimedia, 2020 (text in
``../shared/papers/der.txt``; extension of their ICME 2019 paper "Multi-Label Image Recognition with
Joint Class-Aware Map Disentangling and Label Correlation Embedding"). Gaps: ``NOTES.md`` (DER).

Written against the token view of :mod:`bench.tokens`: X is the backbone's last feature map
d x h x w seen as N = h*w tokens of width D = d, ``tokens [B, N, D]`` on ``grid (h, w)``, flattened
row-major (exactly ``f_flat``). On a feature dataset the tokens are the M modalities (grid (1, M)),
so "positions" are modalities and f_embed has width M.

The model (names as in the paper; code in :class:`DERHead` and the loss functions below)
----------------------------------------------------------------------------------------
* Eq. (11): X = f_cnn(I; θ_cnn), the backbone (``bench.tokens.build_token_encoder``).
* Eq. (12): first stream ŷ_fcls = f_fcls(f_gmp(X); θ_fcls): global max pooling over the N positions,
  then one fully connected layer (``DERHead.fcls``, θ_fcls = its weight [C, d], with a bias).
* Eq. (1)-(2): CADMs A_c = θ_fclsᵀ_c X, A = θ_fclsᵀ X ∈ R^{C x h x w} (:func:`class_aware_maps`),
  the classifier weights applied at every position; the bias is omitted, as the paper says.
* Eq. (13): second stream ŷ_scls = f_gmp(A), the max of each CADM over its positions.
* Eq. (14): ŷ = (ŷ_fcls + ŷ_scls) / 2, the logits trained and used for prediction.
* Eq. (15): L_cls, binary cross-entropy of σ(ŷ) summed over the C labels
  (:func:`classification_loss`; computed from logits, the same function, numerically stable);
  ``bce_reduction="mean"`` averages over the labels instead (see the readings below).
* Eq. (3): a_c = f_embed(f_flat(A_c); θ_embed); f_embed is two fully connected layers of width h*w
  (196 at 14 x 14) with a ReLU between them (``DERHead.embed``).
* Eq. (4)-(6): the pairwise sum Σ_{j∈S} Σ_{k<j∈S} ‖a_j - a_k‖² equals |S| Σ_{j∈S} ‖a_j - ā‖²
  (Eq. 5), ā the mean of the positive label vectors; Eq. (6) keeps the centroid form.
* Eq. (7): L_lce = Σ_{j∈S} ‖a_j - ā‖² + Σ_{k∈S̄} [1 - ‖a_k - ā‖²]_+
  (:func:`label_correlation_embedding_loss`; ``lce_hinge`` reads where the hinge sits).
* Eq. (8)-(10): L_lr = [1 + max_{j∈S} ‖a_j - ā‖² - min_{k∈S̄} ‖a_k - ā‖²]_+ (:func:`label_ranking_loss`).
* Eq. (16): L = L_cls + α L_lce + β L_lr with α = 0.5, β = 0.05 (``alpha``, ``beta``); the "1" of
  Eqs. (7) and (10) is ``margin``. Algorithm 1: one SGD step per mini-batch on L.
* Training (Section IV-B): SGD momentum 0.9, weight decay 1e-4, lr 0.01 divided by 10 every 20 epochs
  (``lr_step``, ``lr_gamma``), 60 epochs; ResNet-101 pretrained on ImageNet; images resized to
  512 x 512, randomly cropped to 448 x 448, randomly flipped. Test images are resized to
  448 x 448: that is ML-GCN's test transform, which the paper does not state (it gives only the
  training augmentation).

Readings where the text leaves room (all constructor arguments)
---------------------------------------------------------------
* Batches: Algorithm 1 is written for one image; each loss is computed per image as written (sums
  over labels) and averaged over the images of the batch.
* An image with no positive label has no centroid ā: its L_lce and L_lr are 0 (it still trains
  L_cls). An image whose labels are all positive has no S̄: its push term is empty and L_lr = 0.
  L_lr is likewise 0 for |S| = 0; for |S| = 1 its max term is 0 (a_j = ā).
* f_embed: "two-layer fully connected network with ReLU as its activation function" is read as
  Linear(h*w, h*w) -> ReLU -> Linear(h*w, h*w) (no ReLU on the label vectors themselves);
  ``embed_width`` (None: h*w) sets the width.
* ``bce_reduction``: Eq. (15) sums the BCE over the C labels (``"sum"``, default, as written);
  the authors' earlier code base (ML-GCN, ``MultiLabelSoftMarginLoss``) averages over them
  (``"mean"``). The sum's gradient is C times the mean's (C = 20 on VOC, 80 on COCO), so at the
  same lr 0.01 the classification step is far larger than in the authors' earlier code; the text
  does not say which of the two its lr was tuned for.
* ``lce_hinge``: Eq. (7) puts the hinge on every uncorrelated label, Σ_{k∈S̄} [1 - ‖a_k - ā‖²]_+
  (``"per_label"``, default, as the equation is typeset); the sentence after it writes the term as
  [1 - Σ_{k∈S̄} ‖a_k - ā‖²]_+, one hinge on the sum (``"on_sum"``), which stops pushing once the
  negatives are far *in total*.
* The losses run in float32 even under bf16 autocast (the shared loop computes them outside it).

Choices where the paper is silent (NOTES.md [choice]; constructor arguments)
----------------------------------------------------------------------------
* ``batch_size=32``; the pretrained backbone learns at ``backbone_lr_mult=0.1`` x the head's learning
  rate, as in ML-GCN's public code (the new layers -- fcls, f_embed, and a feature dataset's token
  encoder -- at ``lr``).
* No validation split and no early stopping (the paper trains a fixed 60 epochs):
  ``val_fraction=0.0``, ``patience=None``; set them to record the validation metrics per epoch
  or to stop early on ``monitor`` (``val_mAP``, the image papers' metric).
* ``amp=True``: bf16 autocast of the forward pass on CUDA (a constructor argument, so part of a
  job's identity: ``--set amp=false`` gives float32 rows of their own).

Ablations (Table IV: operations; Table V: which confidence is read out)
-----------------------------------------------------------------------
* ``disentangle=False``: the "ResNet-101 (Baseline)": GMP + FC, trained and predicted from
  ŷ_fcls alone; it needs ``alpha = beta = 0`` (the CADMs are what embedding and ranking act on).
* "+ Disentangle": ``alpha=0, beta=0`` (two streams, Eq. 14, BCE only); "+ Embed": ``beta=0``;
  "+ Rank": the full model.
* Registered variants with ``ablation_of = "der"``: ``der_baseline``, ``der_disentangle`` and
  ``der_embed`` (Table IV); each is DER with those switches fixed (not among its hyper-parameters).
* Table V ("the prediction scores are extracted from a well-trained network"): the readouts
  ``first_stream`` σ(ŷ_fcls) and ``second_stream`` σ(ŷ_scls) of :meth:`DER.predict_readouts`, from
  the same trained network as the main row's joint confidence σ(ŷ) -- one training, three rows.

Class-aware maps (Figs. 2 and 8): :meth:`DER.class_maps` gives max(A_c, 0) on the h x w grid for
every label (negative evidence clipped at 0, as class-activation-map figures show it).

The paper's setting (ResNet-101 at 448 px with ImageNet weights) needs those weights in the torch
cache and, in practice, a GPU; on the default ``mnist-mosaic`` use e.g. ``--set backbone=small-cnn
--set pretrained=false --set image_size=none --set resize=none`` (native 56 px, a 14 x 14 grid).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import ablation_init
from bench.data import MultiLabelData
from bench.deep import DeepMethod
from bench.errors import BenchError
from bench.tokens import TokenEncoder

BCE_REDUCTIONS = ("sum", "mean")
LCE_HINGES = ("per_label", "on_sum")


# ----------------------------------------------------------------------------- network
class DERHead(nn.Module):
    """DER on top of tokens X [B, N, D]: both streams (Eq. 12-14), CADMs (Eq. 1-2), label vectors (Eq. 3).

    ``forward`` returns ``logits`` (ŷ of Eq. 14, or ŷ_fcls when ``disentangle=False``),
    ``logits_first`` (ŷ_fcls), ``logits_second`` (ŷ_scls), ``class_maps`` max(A, 0) [B, C, N] and,
    when ``embed_width`` is given, ``label_vectors`` a [B, C, embed_width]. With
    ``embed_width=None`` no f_embed is built (α = β = 0: nothing would train it).
    """

    def __init__(self, width: int, n_tokens: int, n_labels: int, disentangle: bool = True,
                 embed_width: int | None = None):
        super().__init__()
        self.disentangle = disentangle
        self.fcls = nn.Linear(width, n_labels)  # f_fcls; θ_fcls = fcls.weight [C, d] (Eq. 12)
        self.embed = None
        if embed_width is not None:              # Eq. (3): f_embed, two FC layers with a ReLU
            self.embed = nn.Sequential(nn.Linear(n_tokens, embed_width), nn.ReLU(),
                                       nn.Linear(embed_width, embed_width))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_first = self.fcls(tokens.amax(dim=1))             # Eq. (12): f_fcls(f_gmp(X))
        cadm = class_aware_maps(tokens, self.fcls.weight)        # Eq. (2): A = θ_fclsᵀ X
        logits_second = cadm.amax(dim=2)                         # Eq. (13): f_gmp(A)
        joint = 0.5 * (logits_first + logits_second)             # Eq. (14)
        out = {"logits": joint if self.disentangle else logits_first,
               "logits_first": logits_first, "logits_second": logits_second, "class_maps": F.relu(cadm)}
        if self.embed is not None:
            out["label_vectors"] = self.embed(cadm)              # Eq. (3): a_c = f_embed(f_flat(A_c))
        return out


def class_aware_maps(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. (1)-(2): A_c = θ_cᵀ X at every position; [B, C, N] from tokens [B, N, d] and θ [C, d]."""
    return torch.einsum("cd,bnd->bcn", weight, tokens)


# ----------------------------------------------------------------------------- losses
def distances_to_positive_mean(vectors: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """‖a_c - ā‖²₂ for every label c of every image, ā the mean of the image's positive label vectors.

    ``vectors`` [B, C, E], ``y`` [B, C] in {0, 1}. Returns the distances [B, C] and a bool [B] saying
    which images have a positive label (elsewhere ā is undefined and the distances meaningless).
    """
    pos = y > 0.5
    n_pos = pos.sum(dim=1)
    mean = (vectors * pos.unsqueeze(-1)).sum(dim=1) / n_pos.clamp(min=1).unsqueeze(-1)  # ā
    dist = (vectors - mean.unsqueeze(1)).pow(2).sum(dim=-1)
    return dist, n_pos > 0


def label_correlation_embedding_loss(vectors: torch.Tensor, y: torch.Tensor, margin: float = 1.0,
                                     hinge: str = "per_label") -> torch.Tensor:
    """Eq. (7) per image, averaged over the batch: Σ_{j∈S} ‖a_j - ā‖² + Σ_{k∈S̄} [margin - ‖a_k - ā‖²]_+
    (``hinge="per_label"``), or + [margin - Σ_{k∈S̄} ‖a_k - ā‖²]_+ (``hinge="on_sum"``, the prose).

    The first term is Eq. (6), i.e. Eq. (4)'s pairwise sum divided by |S| (Eq. 5). An image with no
    positive label has no centroid and contributes 0; one with no negative label has no push term.
    """
    dist, has_pos = distances_to_positive_mean(vectors, y)
    pull = (dist * y).sum(dim=1)
    if hinge == "per_label":
        push = (F.relu(margin - dist) * (1 - y)).sum(dim=1)
    else:
        has_neg = (y <= 0.5).any(dim=1)
        push = torch.where(has_neg, F.relu(margin - (dist * (1 - y)).sum(dim=1)), torch.zeros_like(pull))
    return torch.where(has_pos, pull + push, torch.zeros_like(pull)).mean()


def label_ranking_loss(vectors: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Eq. (10) per image, averaged over the batch: [margin + max_{j∈S} ‖a_j - ā‖² - min_{k∈S̄} ‖a_k - ā‖²]_+.

    Defined when the image has both a positive and a negative label; 0 otherwise.
    """
    dist, has_pos = distances_to_positive_mean(vectors, y)
    pos, neg = y > 0.5, y <= 0.5
    defined = has_pos & neg.any(dim=1)
    # Masked entries get -inf/+inf so they never win the max/min; rows where the max or min is
    # undefined are zeroed before the subtraction, so no inf - inf (NaN) reaches loss or gradient.
    zero = torch.zeros_like(dist[:, 0])
    far_positive = torch.where(defined, dist.masked_fill(~pos, float("-inf")).amax(dim=1), zero)
    near_negative = torch.where(defined, dist.masked_fill(~neg, float("inf")).amin(dim=1), zero)
    loss = F.relu(margin + far_positive - near_negative)
    return torch.where(defined, loss, zero).mean()


def classification_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eq. (15): binary cross-entropy of σ(ŷ) summed over the C labels (``reduction="mean"``:
    averaged over them, as ML-GCN), averaged over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=1)
    return (bce / logits.shape[1] if reduction == "mean" else bce).mean()


# ----------------------------------------------------------------------------- the method
class DER(DeepMethod):
    """DER (Chen et al., IEEE TMM 2020): see the module docstring for the equations and readings."""

    name = "der"
    citation = ("Z.-M. Chen, Q. Cui, X.-S. Wei, X. Jin, Y. Guo. Disentangling, Embedding and Ranking "
                "Label Cues for Multi-Label Image Recognition. IEEE TMM, 2020")

    def __init__(self, backbone: str = "resnet101", pretrained: bool | str = True,
                 image_size: int | None = 448, resize: int | None = 512, flip: bool = True,
                 inputs: str = "auto", width: int | None = None,
                 alpha: float = 0.5, beta: float = 0.05, margin: float = 1.0, embed_width: int | None = None,
                 disentangle: bool = True, bce_reduction: str = "sum", lce_hinge: str = "per_label",
                 epochs: int = 60, batch_size: int = 32, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 1e-4, lr_step: int = 20, lr_gamma: float = 0.1,
                 backbone_lr_mult: float = 0.1, val_fraction: float = 0.0, patience: int | None = None,
                 monitor: str = "val_mAP", amp: bool = True, steps_per_epoch: int | None = None,
                 num_workers: int | None = None, device: str = "auto", random_state: int = 0,
                 verbose: bool = False):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.resize = resize
        self.flip = flip
        self.inputs = inputs
        self.width = width
        self.alpha = alpha
        self.beta = beta
        self.margin = margin
        self.embed_width = embed_width
        self.disentangle = disentangle
        self.bce_reduction = bce_reduction
        self.lce_hinge = lce_hinge
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.backbone_lr_mult = backbone_lr_mult
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
    def build_head(self, encoder: TokenEncoder, n_labels: int) -> DERHead:
        embed_width = None
        if self.alpha or self.beta:
            embed_width = int(self.embed_width or encoder.n_tokens)  # paper: h*w (196 at 14 x 14)
        return DERHead(encoder.width, encoder.n_tokens, n_labels, bool(self.disentangle), embed_width)

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls = classification_loss(outputs["logits"], y, self.bce_reduction)                  # Eq. (15)
        terms = {"cls": cls}
        total = cls
        if "label_vectors" in outputs:
            vectors = outputs["label_vectors"]
            lce = label_correlation_embedding_loss(vectors, y, self.margin, self.lce_hinge)    # Eq. (7)
            rank = label_ranking_loss(vectors, y, self.margin)                                # Eq. (10)
            total = total + self.alpha * lce + self.beta * rank                                # Eq. (16)
            terms.update(lce=lce, rank=rank)
        return total, terms

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """lr divided by 10 every 20 epochs (Section IV-B), stepped once per epoch."""
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step, gamma=self.lr_gamma)

    # -------------------------------------------------------------- readouts (Table V)
    def predict_readouts(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """Table V's other confidences of the trained network: ``first_stream`` σ(ŷ_fcls) (Eq. 12)
        and ``second_stream`` σ(ŷ_scls) (Eq. 13); none for the baseline (it has one stream)."""
        if not self.disentangle:
            return {}
        return self.output_scores(data, {"first_stream": "logits_first", "second_stream": "logits_second"})

    def _check_params(self) -> None:  # run by bench.params.validate before any job, and by fit
        super()._check_params()
        self._check_der_params()

    def _check_der_params(self) -> None:
        where = f"method {self.name!r}"
        if self.alpha < 0 or self.beta < 0:
            raise BenchError(f"{where}: alpha and beta must be >= 0, got alpha={self.alpha!r}, beta={self.beta!r}")
        if not self.disentangle and (self.alpha or self.beta):
            raise BenchError(f"{where}: disentangle=False is the GMP+FC baseline, which has no embedding or "
                             f"ranking; set alpha=0 and beta=0 (got alpha={self.alpha}, beta={self.beta})")
        if not (isinstance(self.lr_step, int) and self.lr_step >= 1):
            raise BenchError(f"{where}: lr_step must be a positive integer (epochs), got {self.lr_step!r}")
        if self.embed_width is not None and not (isinstance(self.embed_width, int) and self.embed_width >= 1):
            raise BenchError(f"{where}: embed_width must be a positive integer or None, got {self.embed_width!r}")
        if self.bce_reduction not in BCE_REDUCTIONS:
            raise BenchError(f"{where}: bce_reduction must be one of {', '.join(BCE_REDUCTIONS)}, "
                             f"got {self.bce_reduction!r}")
        if self.lce_hinge not in LCE_HINGES:
            raise BenchError(f"{where}: lce_hinge must be one of {', '.join(LCE_HINGES)}, got {self.lce_hinge!r}")


# ----------------------------------------------------------------------------- ablations
class DERBaseline(DER):
    """Table IV/V "ResNet-101 (Baseline)": global max pooling + FC, no CADM stream, BCE only."""

    name = "der_baseline"
    ablation_of = "der"
    citation = ("Z.-M. Chen, Q. Cui, X.-S. Wei, X. Jin, Y. Guo. Disentangling, Embedding and Ranking "
                "Label Cues for Multi-Label Image Recognition. IEEE TMM, 2020; ablation: baseline (Table IV)")
    __init__ = ablation_init(DER, {"disentangle": False, "alpha": 0.0, "beta": 0.0})


class DERDisentangle(DER):
    """Table IV "+ Disentangle": both streams (Eq. 14), α = β = 0."""

    name = "der_disentangle"
    ablation_of = "der"
    citation = ("Z.-M. Chen, Q. Cui, X.-S. Wei, X. Jin, Y. Guo. Disentangling, Embedding and Ranking "
                "Label Cues for Multi-Label Image Recognition. IEEE TMM, 2020; ablation: + disentangle (Table IV)")
    __init__ = ablation_init(DER, {"alpha": 0.0, "beta": 0.0})


class DEREmbed(DER):
    """Table IV "+ Embed": both streams and L_lce (α = 0.5), no ranking (β = 0)."""

    name = "der_embed"
    ablation_of = "der"
    citation = ("Z.-M. Chen, Q. Cui, X.-S. Wei, X. Jin, Y. Guo. Disentangling, Embedding and Ranking "
                "Label Cues for Multi-Label Image Recognition. IEEE TMM, 2020; ablation: + disentangle + embed "
                "(Table IV)")
    __init__ = ablation_init(DER, {"beta": 0.0})
