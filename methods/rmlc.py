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
  ``w_co`` for c^t -> o), not the diagonal ones of Gers & Schmidhuber's peephole LSTM; the
  candidate gets no peephole and the output gate sees the *new* cell state, as written. ("W ∈ R^h"
  in the text is read as a dimension typo.) Gate order in the stacked weights: i, f, g(=c~), o.
* Eq. (3): H^t = [h^1, .., h^t] (t·h values) and f_spec^t = H^t U^t + b^t, one dense layer per
  step (``heads[t]``; the paper writes U^t H^t with U^t ∈ R^{(t·h) x L}: a row-vector convention).
  Algorithm 1 line 8 writes [h^0, .., h^t]; h^0 = 0 carries nothing, so Eq. (3)/Table I is used.
* Eq. (4): F^t = σ(f_spec^t + F^{t-1} S) with F^0 = 0 and ONE learned L x L matrix S shared by all
  steps; s_jk is label j's contribution to label k. F^M is the prediction, thresholded at 0.5.
* Eq. (5)-(6): L^t = Σ_i Σ_k BCE(y_ik, F^t_ik) + λ ||U^t||², summed (not averaged) over the batch
  as written; the norm is the squared Frobenius norm of the weight U^t (the bias is not penalised).
  The BCE is computed from the logits (``binary_cross_entropy_with_logits``: the same function,
  numerically stable).
* Algorithm 1 (:func:`train_batch`): for every mini-batch of N_b = 64 examples and every step
  t = 1..M: forward steps 1..t with the *current* parameters, L^t, backward, one Adam step on Φ
  (the LSTM), U^t, b^t and S -- M optimizer steps per batch. Readings: (i) ∂L^t/∂Φ and ∂L^t/∂S are
  the full derivatives through steps 1..t, so steps 1..t-1 are recomputed after each update
  (M(M+1)/2 cell evaluations per batch); (ii) line 14 names U^t, b^t only, so the gradients that
  L^t sends to the earlier heads U^{1..t-1} (through F^{t-1} S) are dropped before the step;
  (iii) S is initialised ONCE, before training: line 2 puts "Initialize S" inside the repeat loop,
  which would wipe the learned correlations every batch and is read as a typo; (iv) Φ and S get an
  Adam step at every t even where their gradient is exactly zero (the columns of W for the
  zeroed modalities of Eq. (1), W_h and the peepholes at t = 1 where h^0 = c^0 = 0, S at t = 1
  where F^0 = 0), as a literal implementation of W X̂^t would: Adam's moments still move them. The per-batch loss
  recorded in ``history_`` is Σ_t (BCE_t + λ||U^t||²) (NOTES.md).

Choices where the paper is silent (NOTES.md [choice] or ours; all constructor arguments)
-----------------------------------------------------------------------------------------
* ``hidden=256``, Adam ``lr=1e-3``, at most ``max_epochs=100`` epochs with early stopping
  (``patience=10``) on a stratified ``val_fraction=0.1`` part of the *training fold*
  (``bench.torch_utils.validation_split``), and the best epoch's weights are kept. The criterion
  (``monitor``) is the validation ranking loss of F^M (``val_ranking_loss``, one of the RMLC
  tables' metrics); ``"val_bce"`` (BCE per example), ``"val_map"`` (macro AP, what the shared
  image training loop monitors) or any ``"val_<metric>"`` of the RMLC tables choose another. Why
  this one, from a sweep over 10 folds (README, "Measured so far"): the BCE stops at epoch 3-5 on
  mnist-mosaic while the ranking keeps improving to epoch ~10 (past that, a few confident mistakes
  raise the BCE while no table metric worsens), and RMLC then only ties ``br``; the macro AP is
  unstable on small validation parts (rare labels have one or two positives there: on 600 yeast
  examples it stopped one fold at epoch 1). The ranking loss averages over examples, not labels.
  Any metric is noise on a validation part of a handful of examples; there the BCE is steadier.
  ``early_stopping=False`` trains ``max_epochs`` epochs on the whole training fold.
* S starts at zero (the network starts as RMLC_NS and learns correlations from there); the LSTM
  weights start U(-1/√h, 1/√h) as in ``torch.nn.LSTM``, the heads as ``torch.nn.Linear``. The
  initialisation draws from a CPU generator seeded with ``random_state``, so it does not depend on
  the device.
* Inputs: every feature is standardised with the mean and standard deviation of the training fold
  (a constant feature gets scale 1). Modality order = the dataset's order of its feature views
  (``MultiLabelData.views``); an image view is ignored (image-only datasets reach RMLC as the
  per-stage feature views of the image pipeline). The last, smaller batch of an epoch is kept.
* ``RMLC_NS`` (Table IV, "the model without considering label correlation matrix S"): the same
  network and training with the S term removed at every step, so F^t_NS = σ(f_spec^t) and the
  prediction is σ(f_spec^M). It is ``label_correlation=False`` here and the registered variant
  :class:`RMLC_NS` (``rmlc_ns``), which draws the same initial weights and batches as RMLC.
* One modality (M = 1, e.g. ``yeast``): F^1 = σ(f_spec^1 + F^0 S) = σ(f_spec^1) since F^0 = 0, so
  S never acts and gets no gradient: RMLC *is* RMLC_NS (identical scores for the same seed), a
  one-step peephole LSTM, i.e. one gated hidden layer of 256 units with a dense output layer.

Outputs: :meth:`RMLC.predict_scores` gives F^M; :meth:`RMLC.predict_steps` gives F^1..F^M as an
array [M, n, L] (the metric-vs-number-of-modalities figure, Fig. 3); ``history_`` holds per epoch
the loss terms and the validation metrics of the RMLC tables (Fig. 2, convergence).

Speed: data are moved to the device once per fit; batches are gathered on the device from one
permutation per epoch; a step is a few batched matrix products (no per-example loop); the step
t = 1 skips the recurrent products (h^0 = c^0 = 0); losses stay on the device until the end of an
epoch (one synchronisation per epoch). ``benchmarks/bench_rmlc.py`` times a 10-fold run at MSRA's
size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Method, ablation_init
from bench.data import FEATURES, MultiLabelData
from bench.errors import BenchError
from bench.metrics import LOWER_IS_BETTER, METRIC_SETS, evaluate
from bench.torch_utils import EarlyStopping, minibatches, torch_device, validation_split
from bench.training import macro_average_precision

#: The metrics of the paper's Tables III-IV, recorded on the validation part every epoch.
VAL_METRICS = METRIC_SETS["multimodal"]
#: What early stopping can monitor, and whether higher is better.
MONITORS = {"val_map": True, "val_bce": False,
            **{f"val_{name}": name not in LOWER_IS_BETTER for name in VAL_METRICS}}
PREDICT_CHUNK = 8192  # rows per forward pass at prediction time (bounds memory on big test sets)


class RMLCNet(nn.Module):
    """The peephole LSTM over modalities, the per-step dense layers and the label matrix S."""

    def __init__(self, dims: list[int], hidden: int, n_labels: int, label_correlation: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.dims, self.hidden, self.label_correlation = tuple(dims), hidden, label_correlation
        h, steps = hidden, len(dims)
        # Eq. (1)-(2): per-modality column blocks of W_{i,f,c,o} acting on X̂^t, stacked [4h, d_t].
        self.w_x = nn.ParameterList([nn.Parameter(torch.empty(4 * h, d)) for d in dims])
        self.w_h = nn.Parameter(torch.empty(4 * h, h))   # W_{i,f,c,o} acting on h^{t-1}
        self.w_c = nn.Parameter(torch.empty(2 * h, h))   # peepholes: W_{i,f} acting on c^{t-1}
        self.w_co = nn.Parameter(torch.empty(h, h))      # peephole: W_o acting on c^t
        self.bias = nn.Parameter(torch.empty(4 * h))     # b_i, b_f, b_c, b_o
        # Eq. (3): one dense layer U^t, b^t per step, on the t·h stacked outputs.
        self.heads = nn.ModuleList([nn.Linear(t * h, n_labels) for t in range(1, steps + 1)])
        # Eq. (4): the label correlation matrix, shared by all steps, initialised once (to zero).
        self.S = nn.Parameter(torch.zeros(n_labels, n_labels))
        with torch.no_grad():
            bound = 1 / math.sqrt(h)
            for p in [*self.w_x, self.w_h, self.w_c, self.w_co, self.bias]:
                p.uniform_(-bound, bound, generator=generator)
            for head in self.heads:
                bound = 1 / math.sqrt(head.in_features)
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)

    @property
    def n_steps(self) -> int:
        return len(self.dims)

    def cell(self, t: int, x: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None):
        """Eq. (2) for a batch at step t (0-based); ``h = c = None`` stands for h^0 = c^0 = 0."""
        z = torch.addmm(self.bias, x, self.w_x[t].T)            # W[X̂^t] + b, Eq. (1)
        if h is not None:
            z = torch.addmm(z, h, self.w_h.T)                   # + W[h^{t-1}]
        z_if, z_g, z_o = z[:, : 2 * self.hidden], z[:, 2 * self.hidden : 3 * self.hidden], z[:, 3 * self.hidden :]
        if c is not None:
            z_if = torch.addmm(z_if, c, self.w_c.T)             # + W[c^{t-1}] (peephole, i and f)
        i, f = torch.sigmoid(z_if).chunk(2, dim=1)
        c_new = i * torch.tanh(z_g) if c is None else f * c + i * torch.tanh(z_g)
        o = torch.sigmoid(torch.addmm(z_o, c_new, self.w_co.T))  # + W[c^t] (peephole, o)
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


def step_loss(net: RMLCNet, t: int, logits: torch.Tensor, y: torch.Tensor, lam: float):
    """Eq. (5)-(6) for step t (0-based): the batch's summed BCE and λ||U^t||²."""
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    return bce, lam * net.heads[t].weight.square().sum()


def shared_parameters(net: RMLCNet) -> list[nn.Parameter]:
    """The parameters Algorithm 1 updates at every step: Φ (the LSTM) and, for RMLC, S."""
    phi = [*net.w_x, net.w_h, net.w_c, net.w_co, net.bias]
    return [*phi, net.S] if net.label_correlation else phi


def make_optimizer(net: RMLCNet, lr: float, fused: bool | None = None) -> torch.optim.Adam:
    """Adam over Φ, every U^t, b^t and (RMLC only) S; RMLC_NS never sees S."""
    params = [*shared_parameters(net), *net.heads.parameters()]
    return torch.optim.Adam(params, lr=lr, fused=fused)


def train_batch(net: RMLCNet, optimizer: torch.optim.Optimizer, xs: list[torch.Tensor], y: torch.Tensor,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on one mini-batch: for t = 1..M, L^t, backward, one optimizer step on Φ, U^t,
    b^t, S. Returns Σ_t BCE_t and Σ_t λ||U^t||² (detached, on the device)."""
    bce_sum = reg_sum = 0.0
    for t in range(net.n_steps):
        optimizer.zero_grad(set_to_none=True)
        logits = net(xs, t + 1, every_step=False)[-1]
        bce, reg = step_loss(net, t, logits, y, lam)
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


class RMLC(Method):
    """RMLC (Zhang et al.): a peephole LSTM over modalities with per-step label prediction polished
    by a shared label correlation matrix S. See the module docstring for the equations."""

    name = "rmlc"
    accepts = frozenset({FEATURES})
    citation = ("Zhang, Shen, Zhang, Zhang & Wang, Rethinking Modal-oriented Label Correlations for "
                "Multi-modal Multi-label Learning (RMLC)")

    def __init__(self, lam: float = 0.1, batch_size: int = 64, hidden: int = 256, lr: float = 1e-3,
                 max_epochs: int = 100, early_stopping: bool = True, val_fraction: float = 0.1,
                 patience: int = 10, monitor: str = "val_ranking_loss", label_correlation: bool = True,
                 random_state: int = 0, device: str = "auto"):
        self.lam = lam
        self.batch_size = batch_size
        self.hidden = hidden
        self.lr = lr
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.patience = patience
        self.monitor = monitor
        self.label_correlation = label_correlation
        self.random_state = random_state
        self.device = device

    # ------------------------------------------------------------------ input handling
    def _check_params(self) -> None:
        checks = [
            ("lam", self.lam, isinstance(self.lam, int | float) and self.lam >= 0, "a number >= 0"),
            ("lr", self.lr, isinstance(self.lr, int | float) and self.lr > 0, "a number > 0"),
            ("monitor", self.monitor, self.monitor in MONITORS, f"one of {', '.join(MONITORS)}"),
        ]
        for name in ("batch_size", "hidden", "max_epochs", "patience"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            checks.append((name, value, ok, "an integer >= 1"))
        for name, value, ok, expected in checks:
            if not ok:
                raise BenchError(f"method {self.name!r}: {name} must be {expected}, got {value!r}")

    def _views(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        views = data.feature_views
        if not views:
            raise BenchError(f"method {self.name!r} needs at least one feature view; dataset "
                             f"{data.name!r} has only {', '.join(data.views)}")
        return views

    def _inputs(self, data: MultiLabelData) -> np.ndarray:
        """The dataset's feature views, concatenated in modality order and standardised."""
        if not hasattr(self, "net_"):
            raise BenchError(f"method {self.name!r} is not fitted: call fit() before predicting")
        views = self._views(data)
        dims = {k: v.shape[1] for k, v in views.items()}
        if dims != self.view_dims_:
            raise BenchError(f"method {self.name!r} was fitted on views {self.view_dims_} but got "
                             f"{dims} from dataset {data.name!r}")
        x = np.concatenate(list(views.values()), axis=1)
        return (x - self.mean_) / self.scale_

    def _to_device(self, x: np.ndarray) -> list[torch.Tensor]:
        """One transfer of the standardised inputs, split into per-modality column views."""
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device_)
        return list(xt.split(list(self.view_dims_.values()), dim=1))

    # ------------------------------------------------------------------ training
    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> RMLC:
        self._check_params()
        views = self._views(train)
        if train.n_samples == 0:
            raise BenchError(f"method {self.name!r}: dataset {train.name!r} has no training example")
        self.device_ = torch_device(self.device)
        self.view_dims_ = {k: v.shape[1] for k, v in views.items()}
        x = np.concatenate(list(views.values()), axis=1).astype(np.float64)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)

        if val is None and self.early_stopping:
            train, val = validation_split(train, self.val_fraction, seed=self.random_state)
        rng = np.random.default_rng(self.random_state)
        generator = torch.Generator().manual_seed(self.random_state)
        self.net_ = RMLCNet(list(self.view_dims_.values()), self.hidden, train.n_labels,
                            self.label_correlation, generator).to(self.device_)
        net = self.net_
        cuda = self.device_.type == "cuda"
        optimizer = make_optimizer(net, self.lr, fused=True if cuda else None)

        xs = self._to_device(self._inputs(train))
        y = torch.as_tensor(train.Y, dtype=torch.float32, device=self.device_)
        if val is not None:
            xs_val = self._to_device(self._inputs(val))
            y_val = torch.as_tensor(val.Y, dtype=torch.float32, device=self.device_)
        stopper = EarlyStopping(patience=self.patience) if self.early_stopping else None

        self.history_ = []
        n = train.n_samples
        for epoch in range(self.max_epochs):
            net.train()
            order = np.concatenate(list(minibatches(n, self.batch_size, shuffle=True, generator=rng)))
            bce_sum = reg_sum = 0.0
            n_batches = 0
            for idx in torch.as_tensor(order, device=self.device_).split(self.batch_size):
                bce, reg = train_batch(net, optimizer, [v[idx] for v in xs], y[idx], self.lam)
                bce_sum, reg_sum, n_batches = bce_sum + bce, reg_sum + reg, n_batches + 1
            record = {"epoch": epoch + 1,                             # counted from 1 (api.Method)
                      "loss": float(bce_sum + reg_sum) / n_batches,   # mean over batches of Σ_t L^t
                      "bce": float(bce_sum) / n_batches,              # its Σ_t BCE_t part
                      "reg": float(reg_sum) / n_batches}              # its Σ_t λ||U^t||² part
            if val is not None:
                record.update(self._validate(xs_val, y_val, val.Y))
            self.history_.append(record)
            if stopper is not None:
                score = record[self.monitor] if MONITORS[self.monitor] else -record[self.monitor]
                if stopper.step(score if math.isfinite(score) else -math.inf, epoch + 1, net):
                    break
        if stopper is not None:
            stopper.restore(net)
            self.best_epoch_ = stopper.best_epoch
        else:
            self.best_epoch_ = self.max_epochs
        net.eval()
        return self

    @torch.no_grad()
    def _validate(self, xs: list[torch.Tensor], y: torch.Tensor, y_np: np.ndarray) -> dict:
        """Validation mAP and BCE (per example) of F^M, and the tables' metrics (``MONITORS``)."""
        self.net_.eval()
        logits = self.net_(xs)[-1]
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / max(len(y), 1)
        scores = torch.sigmoid(logits).cpu().numpy()
        metrics = evaluate(y_np, scores)
        return {"val_map": macro_average_precision(y_np, scores), "val_bce": float(bce),
                **{f"val_{k}": float(metrics[k]) for k in VAL_METRICS}}

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_steps(self, data: MultiLabelData) -> np.ndarray:
        """F^1..F^M for every example, [M, n, L] (RMLC_NS: σ(f_spec^1)..σ(f_spec^M))."""
        x = self._inputs(data)
        self.net_.eval()
        out = []
        for start in range(0, len(x), PREDICT_CHUNK):
            logits = self.net_(self._to_device(x[start : start + PREDICT_CHUNK]))
            out.append(torch.sigmoid(torch.stack(logits)).cpu().numpy())
        if not out:
            return np.zeros((self.net_.n_steps, 0, len(self.net_.S)), dtype=np.float32)
        return np.concatenate(out, axis=1)

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        """F^M, [n, L] (RMLC_NS: σ(f_spec^M))."""
        return self.predict_steps(data)[-1]


class RMLC_NS(RMLC):
    """RMLC_NS (Table IV): RMLC without the label correlation matrix S; predicts σ(f_spec^M)."""

    name = "rmlc_ns"
    ablation_of = "rmlc"
    citation = RMLC.citation + "; ablation RMLC_NS (Table IV)"
    __init__ = ablation_init(RMLC, {"label_correlation": False})  # fixed: not a hyper-parameter here
