"""Folds trained as one model: the k folds of a small deep model trained together, exactly.

Why. RMLC at MSRA's size is launch-bound on a GPU: one mini-batch of Algorithm 1 is ~28 LSTM-cell
evaluations, 7 backward passes and 7 Adam steps (~4,000 small kernels), so eager PyTorch spends
its time launching kernels, not computing. Training the 10 folds of a cross-validation together
does the same launches once for all of them, on tensors with a leading fold dimension.

How, and why it is exact.
* The fold models' parameters are stacked (:func:`torch.func.stack_module_state`: one tensor
  [k, ...] per parameter) and the method's per-fold loss is mapped over the fold dimension with
  :func:`torch.func.vmap` and :func:`torch.func.functional_call` (the method's own module code, not
  a rewrite). The per-fold losses are summed before the backward pass: fold i's parameters only
  reach fold i's loss, so each fold receives exactly its own gradient.
* :class:`FoldAdam` steps each fold's slice with PyTorch's own fused Adam kernel
  (:func:`torch.optim.adam.adam`) and its own moments and step counts; Adam is elementwise, so
  this is the update the fold gets when trained alone (``tests/test_stacked.py`` checks it to
  float64 precision). A fold without a batch at some position (folds differ in size) or one that
  has stopped early is simply left out of the step: its weights and moments stay as they are.
* Batches: fold i's batches are its own method's (:meth:`DeepMethod.train_batch_indices`, from
  its random_state and the epoch); batch b of every fold is gathered into one [k, B, ...] batch,
  the rows past a fold's batch size padded and masked out of its loss (a masked row adds an exact
  zero to the loss and the gradients), so every stacked batch has the same shape.
* Validation, early stopping and the history are per fold, by the method's own code: after each
  epoch each running fold's weights are copied into its own model, :meth:`DeepMethod.validate`
  scores it, and an :class:`~bench.torch_utils.EarlyStopping` per fold keeps its best epoch's
  weights; a fold that stops leaves the stacked updates. Each fold ends with the weights, history
  and best epoch it would have had alone (``time_s`` is the stacked epoch's time, shared).

A method supports this by defining three methods (RMLC does, :mod:`methods.rmlc`):
``stacked_module()`` (the module whose parameters are stacked), ``stacked_inputs(train)`` (the
training part's inputs as the update reads them, a tuple of [n, ...] tensors on the device) and
``stacked_update(stack, optimizer, xs, y, mask, active)`` (one batch's update for every fold:
returns the per-fold loss [k] and loss terms {name: [k]}). It must train in one stage with Adam at
its ``lr`` (torch's default betas and eps: :class:`FoldAdam`), without an EMA or callbacks
(:func:`check_supported`).

CUDA graphs (``cuda_graph=True``, CUDA only; on the CPU it is ignored): after a few eager warm-up
batches, the whole per-batch update of the running folds (forward, backward and fused Adam steps,
thousands of kernels) is captured once in a :class:`torch.cuda.CUDAGraph` and replayed for every
later batch whose active folds are the same: one launch per batch. The stacked batch's fixed
shape (padded and masked) is what makes one capture serve every batch. A batch with another set
of active folds runs eagerly; when a fold stops, the graph is captured again for the folds left.

The plan groups a method's fold jobs that differ only in their fold (:func:`bench.jobs.group_jobs`)
and the worker trains them here (:func:`bench.worker.execute_folds`): automatically on CUDA, on demand elsewhere (``bench run
--stack-folds on``); each fold still gets its own record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench.api import supports_stacking  # the entry point the plan uses, defined without torch
from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.torch_utils import EarlyStopping
from bench.training import higher_is_better

#: Eager batches before a CUDA graph is captured (lazy initialisations must happen outside capture).
GRAPH_WARMUP_BATCHES = 3


def check_supported(method) -> None:
    if not supports_stacking(type(method)):
        raise BenchError(f"method {method.name!r} cannot train its folds together (no stacked_update)")
    if method.param("ema_decay") is not None or method.step_callbacks() or method.epoch_callbacks():
        raise BenchError(f"method {method.name!r}: folds trained together support no EMA or callbacks")


class FoldAdam:
    """Adam over fold-stacked parameters: every fold slice has its own moments and step count, and
    :meth:`step` updates only the folds given, with PyTorch's fused kernel (the one
    ``torch.optim.Adam(fused=True)`` runs), in place."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, float(lr), betas, eps
        self.exp_avg = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in params.items()}
        # float32 step counts on the parameters' device, as torch's fused Adam keeps them
        self.steps = {n: torch.zeros(p.shape[0], dtype=torch.float32, device=p.device) for n, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: Sequence[int]) -> None:
        """One Adam step of the parameters named in ``grads`` (stacked [k, ...] gradients) for the
        folds in ``active``; the other folds and parameters are left untouched."""
        from torch.optim.adam import adam

        lists: tuple[list, list, list, list, list] = ([], [], [], [], [])
        for name, grad in grads.items():
            # autograd.grad may return a transposed layout; the fused kernel needs the parameter's
            grad = grad.contiguous()
            for i in active:
                for out, tensor in zip(lists, (self.params[name], grad, self.exp_avg[name], self.exp_avg_sq[name],
                                               self.steps[name]), strict=True):
                    out.append(tensor[i])
        params, grads_, exp_avgs, exp_avg_sqs, steps = lists
        if params:
            adam(params, grads_, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False, beta1=self.betas[0],
                 beta2=self.betas[1], lr=self.lr, weight_decay=0.0, eps=self.eps, maximize=False)


class StackedFolds:
    """The stacked parameters of k fold modules of one architecture, and the way back to each.

    ``base`` is fold 0's module, through which :func:`torch.func.functional_call` runs any fold's
    parameters; ``params[name]`` is [k, ...] (a leaf tensor with gradients)."""

    def __init__(self, modules: Sequence[nn.Module]):
        from torch.func import stack_module_state

        self.modules, self.base = list(modules), modules[0]
        params, buffers = stack_module_state(self.modules)
        if buffers:
            raise BenchError("folds trained together: the stacked module must have no buffers")
        self.params = params
        self.names = {id(p): name for name, p in self.base.named_parameters()}

    @property
    def k(self) -> int:
        return len(self.modules)

    def name_of(self, parameter: nn.Parameter) -> str:
        """The stacked name of one of ``base``'s parameters."""
        return self.names[id(parameter)]

    @torch.no_grad()
    def load_fold(self, i: int) -> None:
        """Copy fold i's stacked weights into its own module."""
        for name, p in self.modules[i].named_parameters():
            p.copy_(self.params[name][i])


def padded_batches(index_batches: Sequence[Sequence[np.ndarray]], batch_size: int
                   ) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Batch b of every fold as one stacked batch: ``(index [k, B], mask [k, B], active folds)``.
    A fold's rows past its batch's length are padded (index 0) and masked (0.0); a fold with no
    b-th batch is inactive (all masked)."""
    k = len(index_batches)
    out = []
    for b in range(max((len(f) for f in index_batches), default=0)):
        index = np.zeros((k, batch_size), dtype=np.int64)
        mask = np.zeros((k, batch_size), dtype=np.float32)
        active = []
        for i, batches in enumerate(index_batches):
            if b < len(batches):
                rows = np.asarray(batches[b])
                if len(rows) > batch_size:
                    raise BenchError(f"fold {i}: batch of {len(rows)} rows exceeds batch_size {batch_size}")
                index[i, : len(rows)], mask[i, : len(rows)] = rows, 1.0
                active.append(i)
        out.append((index, mask, active))
    return out


def stack_padded(per_fold: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n_i, ...] tensors of k folds -> one [k, max n_i, ...] tensor, zero-padded."""
    n = max(len(t) for t in per_fold)
    out = per_fold[0].new_zeros((len(per_fold), n, *per_fold[0].shape[1:]))
    for i, t in enumerate(per_fold):
        out[i, : len(t)] = t
    return out


class _CapturedUpdate:
    """One batch's update captured in a CUDA graph: inputs copied into static tensors, replayed."""

    def __init__(self, update: Callable, xs: tuple, y: torch.Tensor, mask: torch.Tensor):
        self.static = (tuple(x.clone() for x in xs), y.clone(), mask.clone())
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = update(*self.static)

    def __call__(self, xs: tuple, y: torch.Tensor, mask: torch.Tensor):
        for dst, src in zip(self.static[0], xs, strict=True):
            dst.copy_(src)
        self.static[1].copy_(y)
        self.static[2].copy_(mask)
        self.graph.replay()
        total, terms = self.out
        return total.clone(), {k: v.clone() for k, v in terms.items()}


class _Updates:
    """Runs the stacked update of each batch: eagerly, or through a CUDA graph for the batches
    whose active folds are all the running folds (CUDA and ``cuda_graph`` only)."""

    def __init__(self, method, stack: StackedFolds, optimizer: FoldAdam, device: torch.device, cuda_graph: bool):
        self.method, self.stack, self.optimizer = method, stack, optimizer
        self.use_graph = bool(cuda_graph) and device.type == "cuda"
        self.graph: _CapturedUpdate | None = None
        self.graph_folds: tuple[int, ...] = ()
        self.eager_full_batches = 0
        self.side_stream = torch.cuda.Stream() if self.use_graph else None

    def __call__(self, xs, y, mask, active: list[int], running: list[int]):
        def update(xs_, y_, mask_):
            return self.method.stacked_update(self.stack, self.optimizer, xs_, y_, mask_, active)

        if not self.use_graph or active != running:
            return update(xs, y, mask)
        if self.graph is not None and self.graph_folds == tuple(active):
            return self.graph(xs, y, mask)
        if self.eager_full_batches < GRAPH_WARMUP_BATCHES:  # warm up on a side stream, as capture requires
            self.eager_full_batches += 1
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                out = update(xs, y, mask)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return out
        self.graph, self.graph_folds = _CapturedUpdate(update, xs, y, mask), tuple(active)
        return self.graph(xs, y, mask)  # capture records without running: replay for this batch


def fit_folds(methods: Sequence, trains: Sequence[MultiLabelData], cuda_graph: bool = False) -> list:
    """Fit ``methods[i]`` on ``trains[i]`` for every fold i, all folds trained together (see the
    module docstring); the methods must share their hyper-parameters. Returns the fitted methods."""
    if len(methods) != len(trains) or not methods:
        raise BenchError("fit_folds: give one training part per method")
    for method in methods:
        check_supported(method)
    first = methods[0]
    fit_parts, vals = [], []
    for method, train in zip(methods, trains, strict=True):
        part, val = method.prepare_fit(train)
        fit_parts.append(part)
        vals.append(val)
        method._sources = {}  # the validation part stays on the device across epochs (as in fit)
    device = first.device_
    try:
        stack = StackedFolds([m.stacked_module() for m in methods])
        optimizer = FoldAdam(stack.params, first.lr)
        with torch.no_grad():
            inputs = [m.stacked_inputs(part) for m, part in zip(methods, fit_parts, strict=True)]
            xs_all = tuple(stack_padded([fold[v] for fold in inputs]) for v in range(len(inputs[0])))
            y_all = stack_padded([torch.as_tensor(part.Y, dtype=xs_all[0].dtype, device=device) for part in fit_parts])
        updates = _Updates(first, stack, optimizer, device, cuda_graph)
        histories, best_epochs = _train(methods, vals, fit_parts, stack, updates, xs_all, y_all)
    finally:
        for method in methods:
            del method._sources
    for method, history, best, val in zip(methods, histories, best_epochs, vals, strict=True):
        method.finish_fit(history, best, val)
    return list(methods)


def _train(methods, vals, fit_parts, stack: StackedFolds, updates: _Updates, xs_all, y_all):
    first = methods[0]
    k, device = len(methods), first.device_
    monitor, patience = first.param("monitor"), first.param("patience")
    sign = 1.0 if higher_is_better(monitor) else -1.0
    cap = first.param("steps_per_epoch")
    stoppers = [EarlyStopping(patience=int(patience)) if patience is not None else None for _ in methods]
    histories: list[list[dict]] = [[] for _ in methods]
    running = list(range(k))
    folds = torch.arange(k, device=device)[:, None]
    for epoch in range(1, int(first.epochs) + 1):
        t0 = time.perf_counter()
        index_batches = []
        for i, (method, part) in enumerate(zip(methods, fit_parts, strict=True)):
            batches = method.train_batch_indices(part.n_samples, epoch) if i in running else []
            index_batches.append(batches[:cap] if cap else batches)
        sums: dict[str, torch.Tensor] = {}
        counts = np.zeros(k, dtype=np.int64)
        batches = padded_batches(index_batches, int(first.batch_size))
        if not batches:
            raise BenchError("training: an epoch produced no batch (empty training set?)")
        # one host-to-device copy per epoch of every batch's rows, masks and active folds
        index_all = torch.as_tensor(np.stack([b[0] for b in batches]), device=device)
        mask_all = torch.as_tensor(np.stack([b[1] for b in batches]), dtype=xs_all[0].dtype, device=device)
        on_all = torch.as_tensor(np.stack([np.isin(np.arange(k), b[2]) for b in batches]), device=device)
        for b, (_, _, active) in enumerate(batches):
            index = index_all[b]
            total, terms = updates(tuple(x[folds, index] for x in xs_all), y_all[folds, index], mask_all[b],
                                   active, running)
            for name, value in {"loss": total, **terms}.items():  # summed on the device: one sync per epoch
                value = torch.where(on_all[b], value.detach(), 0).double()
                sums[name] = sums[name] + value if name in sums else value
            counts[active] += 1
        means = {name: (v.cpu().numpy() / np.maximum(counts, 1)) for name, v in sums.items()}
        elapsed = time.perf_counter() - t0
        for i in list(running):
            if counts[i] == 0:
                raise BenchError("training: an epoch produced no batch (empty training set?)")
            if not math.isfinite(means["loss"][i]):
                raise BenchError(f"training diverged: fold {i + 1}'s loss is {means['loss'][i]} in epoch {epoch}; "
                                 "lower the learning rate (--set lr=...)")
            record = {"epoch": epoch, "lr": float(first.lr), **{n: float(v[i]) for n, v in means.items()},
                      "time_s": elapsed}
            if _epoch_end(methods[i], i, stack, vals[i], record, stoppers[i], sign, monitor, histories[i]):
                running.remove(i)
        if not running:
            break
    best_epochs = []
    for i, method in enumerate(methods):
        if stoppers[i] is not None:
            stoppers[i].restore(method.model_)
            best_epochs.append(stoppers[i].best_epoch)
        else:
            stack.load_fold(i)
            best_epochs.append(histories[i][-1]["epoch"] if histories[i] else 0)
    return histories, best_epochs


def _epoch_end(method, i: int, stack: StackedFolds, val, record: dict, stopper, sign: float, monitor: str,
               history: list) -> bool:
    """Validate fold i with its own weights and code, record the epoch, and say whether it stops."""
    stack.load_fold(i)
    if val is not None:
        t0 = time.perf_counter()
        method.model_.eval()
        with torch.no_grad():
            record.update(method.validate(val))
        record["time_s"] += time.perf_counter() - t0
    history.append(record)
    if stopper is None:
        return False
    if monitor not in record:
        raise BenchError(f"early stopping monitors {monitor!r}, which the epoch record lacks (it has {', '.join(record)})")
    score = sign * float(record[monitor])
    return stopper.step(score if math.isfinite(score) else -math.inf, record["epoch"], method.model_)

