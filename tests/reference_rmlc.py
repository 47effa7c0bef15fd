"""RMLC's training update as it stood before it moved onto the shared loop (methods/rmlc.py at
b1a1eee), kept as a test reference: the network, Algorithm 1's per-batch update, Adam over its
parameters and the input standardisation, copied verbatim in substance and written to be read.

``tests/test_rmlc.py`` trains the same three batches with this and with today's ``RMLC.fit`` and
checks that the weights agree. Do not "fix" this file: it is the yardstick.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class OldRMLCNet(nn.Module):
    """The peephole LSTM over modalities (full peephole matrices), per-step heads, S = 0."""

    def __init__(self, dims, hidden, n_labels, label_correlation=True, generator=None):
        super().__init__()
        self.dims, self.hidden, self.label_correlation = tuple(dims), hidden, label_correlation
        h, steps = hidden, len(dims)
        self.w_x = nn.ParameterList([nn.Parameter(torch.empty(4 * h, d)) for d in dims])
        self.w_h = nn.Parameter(torch.empty(4 * h, h))
        self.w_c = nn.Parameter(torch.empty(2 * h, h))
        self.w_co = nn.Parameter(torch.empty(h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.heads = nn.ModuleList([nn.Linear(t * h, n_labels) for t in range(1, steps + 1)])
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
    def n_steps(self):
        return len(self.dims)

    def cell(self, t, x, h, c):
        z = torch.addmm(self.bias, x, self.w_x[t].T)
        if h is not None:
            z = torch.addmm(z, h, self.w_h.T)
        z_if, z_g, z_o = z[:, : 2 * self.hidden], z[:, 2 * self.hidden : 3 * self.hidden], z[:, 3 * self.hidden :]
        if c is not None:
            z_if = torch.addmm(z_if, c, self.w_c.T)
        i, f = torch.sigmoid(z_if).chunk(2, dim=1)
        c_new = i * torch.tanh(z_g) if c is None else f * c + i * torch.tanh(z_g)
        o = torch.sigmoid(torch.addmm(z_o, c_new, self.w_co.T))
        return o * torch.tanh(c_new), c_new

    def forward(self, xs, steps=None, every_step=True):
        steps = self.n_steps if steps is None else steps
        h = c = prev = None
        hs, logits = [], []
        for t in range(steps):
            h, c = self.cell(t, xs[t], h, c)
            hs.append(h)
            if not (every_step or self.label_correlation or t == steps - 1):
                continue
            a = self.heads[t](torch.cat(hs, dim=1) if t else h)
            if self.label_correlation and prev is not None:
                a = a + prev @ self.S
            logits.append(a)
            prev = torch.sigmoid(a) if self.label_correlation else None
        return logits


def old_shared_parameters(net):
    phi = [*net.w_x, net.w_h, net.w_c, net.w_co, net.bias]
    return [*phi, net.S] if net.label_correlation else phi


def old_make_optimizer(net, lr):
    """Adam (PyTorch's default implementation on the CPU: the old code asked for fused only on CUDA)."""
    return torch.optim.Adam([*old_shared_parameters(net), *net.heads.parameters()], lr=lr)


def old_train_batch(net, optimizer, xs, y, lam):
    """Algorithm 1 on one mini-batch: for t = 1..M, L^t = BCE_t (summed) + λ||U^t||², backward,
    zero gradients for the untouched shared parameters, drop the other heads' gradients, one step."""
    for t in range(net.n_steps):
        optimizer.zero_grad(set_to_none=True)
        logits = net(xs, t + 1, every_step=False)[-1]
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        reg = lam * net.heads[t].weight.square().sum()
        (bce + reg).backward()
        for p in old_shared_parameters(net):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for other, head in enumerate(net.heads):
            if other != t:
                head.weight.grad = head.bias.grad = None
        optimizer.step()


def old_standardised_views(train_views: list[np.ndarray]) -> list[torch.Tensor]:
    """The old inputs: all views concatenated, standardised in float64 with the training part's
    mean and std (a feature with std <= 1e-12 gets scale 1), then float32, split per modality."""
    x = np.concatenate(train_views, axis=1).astype(np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    return list(torch.as_tensor(x, dtype=torch.float32).split([v.shape[1] for v in train_views], dim=1))
