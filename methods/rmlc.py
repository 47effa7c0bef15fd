"""RMLC: Rethinking Modal-oriented Label Correlations, and its ablation RMLC_NS.

Paper: Y. Zhang, J. Shen, Z. Zhang, L. Zhang & C. Wang (Nanjing University), "Rethinking
Modal-oriented Label Correlations for Multi-modal Multi-label Learning" (text in
``../shared/papers/rmlc.txt``; the gaps it leaves are filled in ``../shared/papers/NOTES.md``).

The model (names as in the paper; x^t is modality t of one example, h the hidden size)
---------------------------------------------------------------------------------------
* Eq. (1): step t of an LSTM sees all modalities concatenated, every one but the t-th zeroed:
  X̂^t = [0, .., x^t, .., 0]. A weight matrix acting on X̂^t therefore reduces to its block of
  columns for modality t, so :class:`RMLCNet` stores the input weights as one block per modality
  (``w_x[t]``) and computes ``W X̂^t`` as ``w_x[t] x^t`` -- the same numbers, without the zeros.
* Eq. (2): the paper's LSTM has peephole connections, written with full matrices on the
  concatenations: i^t = σ(W_i[X̂^t, h^{t-1}, c^{t-1}] + b_i), f^t likewise,
  c^t = f^t ⊙ c^{t-1} + i^t ⊙ tanh(W_c[X̂^t, h^{t-1}] + b_c), o^t = σ(W_o[X̂^t, h^{t-1}, c^t] + b_o),
  h^t = o^t ⊙ tanh(c^t), with h^0 = c^0 = 0. ``torch.nn.LSTM`` has no peepholes, so the cell is
  written here (:meth:`RMLCNet.cell`), vectorized over the batch. Reading: the text takes the
  notation literally -- the peephole weights are full h x h matrices (``w_c`` for c^{t-1} -> i, f;
  ``w_co`` for c^t -> o; ``peepholes="full"``), not the diagonal ones of Gers & Schmidhuber's
  peephole LSTM (``peepholes="diagonal"``: one weight per cell, w ⊙ c); the candidate gets no
  peephole and the output gate sees the *new* cell state, as written. ("W ∈ R^h" in the text is
  read as a dimension typo.) Gate order in the stacked weights: i, f, g(=c~), o.
* Eq. (3): H^t = [h^1, .., h^t] (t·h values) and f_spec^t = H^t U^t + b^t, one dense layer per
  step (``heads[t]``; the paper writes U^t H^t with U^t ∈ R^{(t·h) x L}: a row-vector convention).
  Algorithm 1 line 8 writes [h^0, .., h^t]; h^0 = 0 carries nothing, so Eq. (3)/Table I is used.
* Eq. (4): F^t = σ(f_spec^t + F^{t-1} S) with F^0 = 0 and ONE learned L x L matrix S shared by all
  steps; s_jk is label j's contribution to label k. F^M is the prediction, thresholded at 0.5.
* Eq. (5)-(6): L^t = Σ_i Σ_k BCE(y_ik, F^t_ik) + λ ||U^t||², summed (not averaged) over the batch
  as written; the norm is the squared Frobenius norm of the weight U^t (the bias is not penalised).
  The BCE is computed from the logits (``binary_cross_entropy_with_logits``: the same function,
  numerically stable).
* Algorithm 1 (:func:`train_batch`, the custom per-batch update of the shared training loop,
  :mod:`bench.training`): for every mini-batch of N_b = 64 examples and every step
  t = 1..M: forward steps 1..t with the *current* parameters, L^t, backward, one Adam step on Φ
  (the LSTM), U^t, b^t and S -- M optimizer steps per batch. Readings: (i) ∂L^t/∂Φ and ∂L^t/∂S are
  the full derivatives through steps 1..t, so steps 1..t-1 are recomputed after each update
  (M(M+1)/2 cell evaluations per batch); (ii) line 14 names U^t, b^t only, so the gradients that
  L^t sends to the earlier heads U^{1..t-1} (through F^{t-1} S) are dropped before the step;
  (iii) S is initialised ONCE, before training: line 2 puts "Initialize S" inside the repeat loop,
  which would wipe the learned correlations every batch and is read as a typo (how it is
  initialised the text does not say: ``s_init``, below); (iv) Φ and S get an
  Adam step at every t even where their gradient is exactly zero (the columns of W for the
  zeroed modalities of Eq. (1), W_h and the peepholes at t = 1 where h^0 = c^0 = 0, S at t = 1
  where F^0 = 0), as a literal implementation of W X̂^t would: Adam's moments still move them. The per-batch loss
  recorded in ``history_`` is Σ_t (BCE_t + λ||U^t||²) (NOTES.md).

Choices where the paper is silent (NOTES.md [choice] or ours; all constructor arguments)
-----------------------------------------------------------------------------------------
* ``hidden=256``, Adam ``lr=1e-3`` (PyTorch's fused implementation, on the CPU too), at most
  ``epochs=100`` epochs with early stopping (``patience=10``) on a stratified ``val_fraction=0.1``
  part of the *training fold* (``bench.protocols.validation_split``); the best epoch's weights
  are kept. ``patience=None`` trains ``epochs`` epochs; ``val_fraction=0`` also drops the
  validation part. The criterion (``monitor``) is the validation Hamming loss of F^M thresholded
  at 0.5 (``val_hamming_loss``); ``val_loss`` (the BCE of F^M summed over labels, per example) or
  any ``val_<metric>`` of ``bench.metrics`` chooses another. It was chosen on validation data only,
  by a rule fixed before the sweep: a nested split inside each training part of the 10 folds of
  ``mnist-mosaic`` and ``yeast``, the candidates ranked on RMLC's six table metrics of a held-out
  part of the training data (``benchmarks/rmlc_early_stopping.py``; docs/methods.md, "RMLC").
  The validation BCE, the earlier default, stops too early on ``mnist-mosaic`` (epoch 5).
* ``s_init="zeros"``: S starts at zero (the network starts as RMLC_NS and learns correlations
  from there); ``"uniform"`` draws it U(-1/√L, 1/√L) like the other weights. The LSTM weights start
  U(-1/√h, 1/√h) as in ``torch.nn.LSTM``, the heads as ``torch.nn.Linear``. The initialisation
  draws from a CPU generator seeded with ``random_state``, so it does not depend on the device.
* Inputs: every feature is standardised with the mean and standard deviation of the training
  part (after the validation carve-out; scikit-learn's ``StandardScaler`` statistics, a constant
  feature gets scale 1). Modality order = the order of the training part's feature views
  (``MultiLabelData.views``); at prediction the views are taken *by name* in that order, so a
  dataset listing the same views in another order gets the same scores. An image view is
  ignored (image-only datasets reach RMLC as the per-stage feature views of the image pipeline).
  Batches: a permutation per epoch; the last, smaller batch is kept.
* ``amp=False``: plain float32 also on CUDA (the products are small; bf16 would change the
  numbers for little speed).
* ``RMLC_NS`` (Table IV, "the model without considering label correlation matrix S"): the same
  network and training with the S term removed at every step, so F^t_NS = σ(f_spec^t) and the
  prediction is σ(f_spec^M). It is ``label_correlation=False`` here and the registered variant
  :class:`RMLC_NS` (``rmlc_ns``), which draws the same initial weights and batches as RMLC. The
  text allows another reading: the *full* model trained with S, read out without the S term
  (σ(f_spec^M) of a trained RMLC) -- a readout of one training rather than a second training;
  we follow the sentence ("the model without considering S"), which describes a different model.
* One modality (M = 1, e.g. ``yeast``): F^1 = σ(f_spec^1 + F^0 S) = σ(f_spec^1) since F^0 = 0, so
  S never acts and gets no gradient: RMLC *is* RMLC_NS (identical scores for the same seed), a
  one-step peephole LSTM, i.e. one gated hidden layer of 256 units with a dense output layer.

Outputs: :meth:`RMLC.predict_scores` gives F^M; :meth:`RMLC.predict_steps` gives F^1..F^M as an
array [M, n, L] (the metric-vs-number-of-modalities figure, Fig. 3); :meth:`RMLC.predict_readouts`
gives F^1..F^{M-1} as the readouts ``modalities_1`` .. (one table row each, from the same
training); ``history_`` holds per epoch the loss terms and the validation metrics (Fig. 2).

Speed: data are moved to the device once per fit; batches are gathered on the device from one
permutation per epoch; a step is a few batched matrix products (no per-example loop); the step
t = 1 skips the recurrent products (h^0 = c^0 = 0); losses stay on the device until the end of an
epoch (one synchronisation per epoch). ``benchmarks/bench_rmlc.py`` times a 10-fold run at MSRA's
size.
"""

from __future__ import annotations

import contextlib
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
from bench.tokens import Standardize
from bench.training import Batch, Stage, full_precision

PEEPHOLES = ("full", "diagonal")
S_INITS = ("zeros", "uniform")


class RMLCNet(nn.Module):
    """The peephole LSTM over modalities, the per-step dense layers and the label matrix S."""

    def __init__(self, dims: list[int], hidden: int, n_labels: int, label_correlation: bool = True,
                 generator: torch.Generator | None = None, peepholes: str = "full", s_init: str = "zeros"):
        super().__init__()
        self.dims, self.hidden, self.label_correlation = tuple(dims), hidden, label_correlation
        self.diagonal = peepholes == "diagonal"
        h, steps = hidden, len(dims)
        # Eq. (1)-(2): per-modality column blocks of W_{i,f,c,o} acting on X̂^t, stacked [4h, d_t].
        self.w_x = nn.ParameterList([nn.Parameter(torch.empty(4 * h, d)) for d in dims])
        self.w_h = nn.Parameter(torch.empty(4 * h, h))   # W_{i,f,c,o} acting on h^{t-1}
        # peepholes: W_{i,f} acting on c^{t-1} and W_o acting on c^t (full matrices, or diagonals)
        self.w_c = nn.Parameter(torch.empty(2 * h) if self.diagonal else torch.empty(2 * h, h))
        self.w_co = nn.Parameter(torch.empty(h) if self.diagonal else torch.empty(h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))     # b_i, b_f, b_c, b_o
        # Eq. (3): one dense layer U^t, b^t per step, on the t·h stacked outputs.
        self.heads = nn.ModuleList([nn.Linear(t * h, n_labels) for t in range(1, steps + 1)])
        # Eq. (4): the label correlation matrix, shared by all steps, initialised once.
        self.S = nn.Parameter(torch.zeros(n_labels, n_labels))
        with torch.no_grad():
            bound = 1 / math.sqrt(h)
            for p in [*self.w_x, self.w_h, self.w_c, self.w_co, self.bias]:
                p.uniform_(-bound, bound, generator=generator)
            for head in self.heads:
                bound = 1 / math.sqrt(head.in_features)
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)
            if s_init == "uniform":
                self.S.uniform_(-1 / math.sqrt(n_labels), 1 / math.sqrt(n_labels), generator=generator)

    @property
    def n_steps(self) -> int:
        return len(self.dims)

    def cell(self, t: int, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None):
        """Eq. (2) for a batch at step t (0-based); ``h = c = None`` stands for h^0 = c^0 = 0."""
        z = torch.addmm(self.bias, x, self.w_x[t].T)            # W[X̂^t] + b, Eq. (1)
        if h is not None:
            z = torch.addmm(z, h, self.w_h.T)                   # + W[h^{t-1}]
        z_if, z_g, z_o = z[:, : 2 * self.hidden], z[:, 2 * self.hidden : 3 * self.hidden], z[:, 3 * self.hidden :]
        if c is not None:                                       # + W[c^{t-1}] (peephole, i and f)
            z_if = z_if + c.repeat(1, 2) * self.w_c if self.diagonal else torch.addmm(z_if, c, self.w_c.T)
        i, f = torch.sigmoid(z_if).chunk(2, dim=1)
        c_new = i * torch.tanh(z_g) if c is None else f * c + i * torch.tanh(z_g)
        z_o = z_o + c_new * self.w_co if self.diagonal else torch.addmm(z_o, c_new, self.w_co.T)
        o = torch.sigmoid(z_o)                                  # + W[c^t] (peephole, o)
        return o * torch.tanh(c_new), c_new

    def forward(self, xs: list[torch.Tensor], steps: int | None = None, every_step: bool = True) -> list:
        """Logits a^1..a^steps with F^t = σ(a^t) (Eq. 4; RMLC_NS: a^t = f_spec^t).

        ``every_step=False`` computes only the last step's logits where nothing else needs the
        earlier ones (RMLC_NS training), returning a one-element list.
        """
        steps = self.n_steps if steps is None else steps
        h = c = prev = None
        hs, logits = [], []
        for t in range(steps):
            h, c = self.cell(t, xs[t], h, c)
            hs.append(h)
            if not (every_step or self.label_correlation or t == steps - 1):
                continue
            a = self.heads[t](torch.cat(hs, dim=1) if t else h)     # f_spec^t, Eq. (3)
            if self.label_correlation and prev is not None:
                a = a + prev @ self.S                                # + F^{t-1} S, Eq. (4)
            logits.append(a)
            prev = torch.sigmoid(a) if self.label_correlation else None
        return logits


class RMLCModel(nn.Module):
    """The standardisation of the views (training-part statistics) followed by :class:`RMLCNet`.

    ``forward(views)`` -> ``{"logits": a^M, "step_logits": [B, M, L]}`` (a^1..a^M)."""

    def __init__(self, views: dict[str, np.ndarray], net: RMLCNet):
        super().__init__()
        self.standardize = Standardize(views)
        self.net = net

    def forward(self, views) -> dict[str, torch.Tensor]:
        logits = self.net(self.standardize(views))
        return {"logits": logits[-1], "step_logits": torch.stack(logits, dim=1)}


def step_loss(net: RMLCNet, t: int, logits: torch.Tensor, y: torch.Tensor, lam: float):
    """Eq. (5)-(6) for step t (0-based): the batch's summed BCE and λ||U^t||²."""
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    return bce, lam * net.heads[t].weight.square().sum()


def shared_parameters(net: RMLCNet) -> list[nn.Parameter]:
    """The parameters Algorithm 1 updates at every step: Φ (the LSTM) and, for RMLC, S."""
    phi = [*net.w_x, net.w_h, net.w_c, net.w_co, net.bias]
    return [*phi, net.S] if net.label_correlation else phi


def make_optimizer(net: RMLCNet, lr: float) -> torch.optim.Adam:
    """Adam over Φ, every U^t, b^t and (RMLC only) S; RMLC_NS never sees S. PyTorch's fused
    implementation (one kernel for every parameter), on the CPU as on CUDA."""
    params = [*shared_parameters(net), *net.heads.parameters()]
    return torch.optim.Adam(params, lr=lr, fused=True)


def train_batch(net: RMLCNet, optimizer: torch.optim.Optimizer, xs: list[torch.Tensor], y: torch.Tensor,
                lam: float, autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on one mini-batch: for t = 1..M, L^t, backward, one optimizer step on Φ, U^t,
    b^t, S. Returns Σ_t BCE_t and Σ_t λ||U^t||² (detached, on the device). ``autocast`` is the
    forward passes' context; the losses are computed in float32 outside it."""
    bce_sum = reg_sum = 0.0
    for t in range(net.n_steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = net(xs, t + 1, every_step=False)[-1]
        bce, reg = step_loss(net, t, full_precision(logits), y, lam)
        (bce + reg).backward()
        # Line 14 updates Φ and S at every step. Where Eq. (1)'s zeros, h^0 = c^0 = 0 or F^0 = 0
        # make a gradient exactly zero, the cell skips the product and autograd leaves None; Adam
        # must still see the zero (its moments move the parameter), as with the literal W X̂^t.
        for p in shared_parameters(net):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for other, head in enumerate(net.heads):    # line 14 updates U^t, b^t only
            if other != t:
                head.weight.grad = head.bias.grad = None
        optimizer.step()
        bce_sum, reg_sum = bce_sum + bce.detach(), reg_sum + reg.detach()
    return bce_sum, reg_sum


def stacked_train_batch(stack, optimizer, xs: tuple[torch.Tensor, ...], y: torch.Tensor, mask: torch.Tensor,
                        lam: float, active: list[int], autocast=contextlib.nullcontext):
    """Algorithm 1 on one stacked mini-batch of k folds (:mod:`bench.stacked`): :func:`train_batch`
    for every fold at once. ``xs``: the standardised views [k, B, d_t], ``y`` [k, B, L], ``mask``
    [k, B] (0: a padding row); fold i's L^t is its own Eq. (5)-(6), computed by :class:`RMLCNet`'s
    code on fold i's weights (``vmap`` of ``functional_call``); the per-fold losses are summed, so
    each fold's parameters get their own gradient, and ``optimizer`` (a :class:`bench.stacked.FoldAdam`)
    steps the ``active`` folds. Returns Σ_t L^t and its parts per fold ([k] each, detached)."""
    from torch.func import functional_call, vmap

    net = stack.base
    shared = [stack.name_of(p) for p in shared_parameters(net)]
    bce_sum = reg_sum = 0.0
    for t in range(net.n_steps):
        head = [stack.name_of(net.heads[t].weight), stack.name_of(net.heads[t].bias)]

        def fold_loss(params, xs_, y_, mask_, t=t, head=head):
            with autocast():
                logits = functional_call(net, params, (xs_, t + 1), {"every_step": False})[-1]
            bce = (F.binary_cross_entropy_with_logits(full_precision(logits), y_, reduction="none")
                   * mask_[:, None]).sum()                              # Eq. (5), padding rows masked
            return bce, lam * params[head[0]].square().sum()           # Eq. (6)

        bce, reg = vmap(fold_loss)(stack.params, xs, y, mask)
        names = shared + head                                          # line 14: Φ, S, U^t, b^t
        grads = torch.autograd.grad((bce + reg).sum(), [stack.params[n] for n in names], allow_unused=True)
        # as in train_batch: a gradient that is exactly zero (None here) still makes Adam step
        optimizer.step({n: torch.zeros_like(stack.params[n]) if g is None else g
                        for n, g in zip(names, grads, strict=True)}, active)
        bce_sum, reg_sum = bce_sum + bce.detach(), reg_sum + reg.detach()
    return bce_sum + reg_sum, {"bce": bce_sum, "reg": reg_sum}


class RMLC(DeepMethod):
    """RMLC (Zhang et al.): a peephole LSTM over modalities with per-step label prediction polished
    by a shared label correlation matrix S. See the module docstring for the equations."""

    name = "rmlc"
    accepts = frozenset({FEATURES})
    citation = ("Zhang, Shen, Zhang, Zhang & Wang, Rethinking Modal-oriented Label Correlations for "
                "Multi-modal Multi-label Learning (RMLC)")
    #: rows per forward pass at prediction (bounds memory on big test sets; not a hyper-parameter)
    eval_batch_size: ClassVar[int] = 8192
    #: GPU memory one job needs, CUDA context included (bench.backends: small jobs share a GPU). At
    #: MSRA's size the data on the device take ~55 MB and the network a few MB; a worker's CUDA
    #: context ~0.5 GB.
    gpu_memory_mb: ClassVar[int] = 2048

    def __init__(self, lam: float = 0.1, batch_size: int = 64, hidden: int = 256, lr: float = 1e-3,
                 epochs: int = 100, val_fraction: float = 0.1, patience: int | None = 10,
                 monitor: str = "val_hamming_loss", amp: bool = False, label_correlation: bool = True,
                 peepholes: str = "full", s_init: str = "zeros", random_state: int = 0, device: str = "auto"):
        self.lam = lam
        self.batch_size = batch_size
        self.hidden = hidden
        self.lr = lr
        self.epochs = epochs
        self.val_fraction = val_fraction
        self.patience = patience
        self.monitor = monitor
        self.amp = amp
        self.label_correlation = label_correlation
        self.peepholes = peepholes
        self.s_init = s_init
        self.random_state = random_state
        self.device = device

    # ------------------------------------------------------------------ the shared loop's hooks
    def build_model(self, train: MultiLabelData) -> RMLCModel:
        views = {name: train.views[name] for name in self.view_names_}
        net = RMLCNet([v.shape[1] for v in views.values()], self.hidden, train.n_labels, self.label_correlation,
                      torch.Generator().manual_seed(int(self.random_state)), self.peepholes, self.s_init)
        return RMLCModel(views, net)

    def make_optimizer(self, model: RMLCModel) -> torch.optim.Adam:
        return make_optimizer(model.net, self.lr)

    def stages(self) -> list[Stage]:
        """One stage whose per-batch update is Algorithm 1 (M optimizer steps per batch)."""
        return [Stage("train", epochs=int(self.epochs), optimizer=self.make_optimizer(self.model_),
                      update=self.algorithm1, patience=self.patience)]

    def algorithm1(self, batch: Batch, optimizer: torch.optim.Optimizer):
        """The update of one mini-batch (:func:`train_batch`); the history records per epoch the
        mean over batches of Σ_t L^t (``loss``) and its parts Σ_t BCE_t (``bce``), Σ_t λ||U^t||² (``reg``)."""
        with torch.no_grad():
            xs = self.model_.standardize(batch.inputs)
        bce, reg = train_batch(self.model_.net, optimizer, xs, batch.y, self.lam, self.autocast)
        return bce + reg, {"bce": bce, "reg": reg}

    # ------------------------------------------------------------------ folds trained together
    # (bench.stacked: the k folds of a cross-validation as one stacked model, exactly)
    def stacked_module(self) -> RMLCNet:
        return self.model_.net

    def stacked_inputs(self, train: MultiLabelData) -> tuple[torch.Tensor, ...]:
        """The training part's views, standardised once (elementwise, as algorithm1 does per batch)."""
        return tuple(self.model_.standardize(self._source(train, train=True).views))

    def stacked_update(self, stack, optimizer, xs, y, mask, active):
        """Algorithm 1 on a stacked batch of every fold (:func:`stacked_train_batch`)."""
        return stacked_train_batch(stack, optimizer, xs, y, mask, self.lam, active, self.autocast)

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor):
        """The validation loss: Eq. (5) at t = M, the BCE of F^M summed over labels, per example."""
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], y, reduction="sum") / max(len(y), 1)
        return bce, {}

    # ------------------------------------------------------------------ prediction
    def predict_steps(self, data: MultiLabelData) -> np.ndarray:
        """F^1..F^M for every example, [M, n, L] (RMLC_NS: σ(f_spec^1)..σ(f_spec^M))."""
        def fn(model, batch):
            return torch.sigmoid(full_precision(self.forward_eval(model, batch))["step_logits"])

        steps = self.map_batches(data, fn)
        if steps is None:
            return np.zeros((len(self.view_names_), 0, self.n_labels_))
        return steps.transpose(1, 0, 2).astype(np.float64)

    def predict_readouts(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """F^t after the first t modalities, t = 1..M-1 (the main row is F^M): ``modalities_<t>``."""
        steps = self.predict_steps(data)
        return {f"modalities_{t + 1}": steps[t] for t in range(len(steps) - 1)}

    def _check_params(self) -> None:  # run by bench.params.validate before any job, and by fit
        super()._check_params()
        self._check_rmlc_params()

    def _check_rmlc_params(self) -> None:
        checks = [("lam", self.lam, isinstance(self.lam, int | float) and self.lam >= 0, "a number >= 0"),
                  ("hidden", self.hidden, isinstance(self.hidden, int) and not isinstance(self.hidden, bool)
                   and self.hidden >= 1, "an integer >= 1"),
                  ("peepholes", self.peepholes, self.peepholes in PEEPHOLES, f"one of {', '.join(PEEPHOLES)}"),
                  ("s_init", self.s_init, self.s_init in S_INITS, f"one of {', '.join(S_INITS)}")]
        for name, value, ok, expected in checks:
            if not ok:
                raise BenchError(f"method {self.name!r}: {name} must be {expected}, got {value!r}")


class RMLC_NS(RMLC):
    """RMLC_NS (Table IV): RMLC without the label correlation matrix S; predicts σ(f_spec^M)."""

    name = "rmlc_ns"
    ablation_of = "rmlc"
    citation = ("Zhang, Shen, Zhang, Zhang & Wang, Rethinking Modal-oriented Label Correlations for "
                "Multi-modal Multi-label Learning (RMLC); ablation RMLC_NS (Table IV)")
    __init__ = ablation_init(RMLC, {"label_correlation": False})  # fixed: not a hyper-parameter here
