"""RETDM (methods/retdm.py): the neighbour search, each loss term against a readable per-example loop,
the three stages (freezing really freezes), the sampler, the VGG fc6 weights. The plug-in contract
is checked by tests/test_method_conformance.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench import plugins
from bench.data import ImageView, MultiLabelData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

retdm = plugins.get("methods", "retdm")
module = __import__(retdm.__module__, fromlist=["x"])

TINY = dict(backbone="small-cnn", pretrained=False, image_size=None, resize=None, fc_width=32, embed_dim=16,
            label_hidden=16, batch_size=12, device="cpu", num_workers=0)


def labelled(n: int = 36, labels: int = 5, seed: int = 0, kind: str = "features") -> MultiLabelData:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, labels)) < 0.35).astype(np.uint8)
    Y[:4] = Y[4]                        # a group of identical label sets
    if kind == "features":
        views = {"a": (Y @ rng.normal(size=(labels, 6)) + 0.3 * rng.normal(size=(n, 6))).astype(np.float32),
                 "b": rng.normal(size=(n, 3)).astype(np.float32)}
    else:
        pix = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
        for label in range(min(labels, 4)):
            r, c = divmod(label, 2)
            pix[Y[:, label] == 1, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 150
        views = {"image": ImageView(array=pix)}
    return MultiLabelData(f"tiny-{kind}", views, Y, tuple(f"l{i}" for i in range(labels)))


# ----------------------------------------------------------------------------- neighbours
def brute_force_neighbours(query, reference, k, pool=None):
    """Readable N_k: every reference row, Hamming distance, identical sets out, sorted by (d, index)."""
    pool = list(range(len(reference))) if pool is None else list(pool)
    out = []
    for y in query:
        scored = []
        for j in pool:
            d = sum(int(a != b) for a, b in zip(y, reference[j], strict=True))
            if d > 0:
                scored.append((d, j))
        out.append([j for _, j in sorted(scored)[:k]])
    return out


def as_lists(index, valid):
    return [[int(i) for i, ok in zip(row, ok_row, strict=True) if ok] for row, ok_row in zip(index, valid, strict=True)]


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_the_neighbour_search_matches_a_brute_force_loop_ties_and_identical_sets_included(k):
    Y = labelled(n=30, labels=4).Y            # 4 labels: many ties in distance, many identical sets
    index, valid = module.nearest_label_sets(torch.as_tensor(Y), torch.as_tensor(Y), k)
    assert index.shape == valid.shape == (30, k)
    got = as_lists(index.numpy(), valid.numpy())
    assert got == brute_force_neighbours(Y, Y, k)
    for i, row in enumerate(got):
        assert i not in row and all((Y[j] != Y[i]).any() for j in row)
        if k == 40:                            # fewer candidates than k: all of them, the rest masked
            assert len(row) == sum((Y[j] != Y[i]).any() for j in range(30))
    # queries that are not in the reference (validation label vectors) and a small chunk size
    query = (np.random.default_rng(1).random((7, 4)) < 0.5).astype(np.uint8)
    old = module._CHUNK_ELEMENTS
    module._CHUNK_ELEMENTS = 40                 # one row per chunk
    try:
        index, valid = module.nearest_label_sets(torch.as_tensor(query), torch.as_tensor(Y), k)
    finally:
        module._CHUNK_ELEMENTS = old
    assert as_lists(index.numpy(), valid.numpy()) == brute_force_neighbours(query, Y, k)


def test_distinct_neighbours_are_distinct_label_sets_each_as_its_first_example():
    Y = labelled(n=30, labels=4).Y
    method = retdm(**TINY, n_neighbours=5, distinct_neighbours=True)
    method.device_ = torch.device("cpu")
    method.setup(MultiLabelData("y", {"a": np.zeros((30, 1), np.float32)}, Y, tuple("abcd")))
    first = {}
    for j, row in enumerate(map(tuple, Y)):
        first.setdefault(row, j)
    got = as_lists(method.neighbours_.numpy(), method.neighbour_valid_.numpy())
    assert got == brute_force_neighbours(Y, Y, 5, pool=sorted(first.values()))
    assert all(len({tuple(Y[j]) for j in row}) == len(row) for row in got)


# ----------------------------------------------------------------------------- losses
def loop_pair_loss(d2_true, d2_neg, mask, margin, softmax_over):
    """Eqs. (5)-(7) written per anchor with Python scalars."""
    values = []
    for r in range(len(d2_true)):
        negs = [float(d2_neg[r, j]) for j in range(d2_neg.shape[1]) if mask[r, j]]
        if not negs:
            continue
        scores = [-float(d2_true[r])] + [-d for d in negs]
        if softmax_over == "similarities":
            scores = [math.exp(s) for s in scores]
        nll = -(scores[0] - math.log(sum(math.exp(s) for s in scores)))
        hinge = sum(max(0.0, margin + math.sqrt(float(d2_true[r])) - math.sqrt(d)) for d in negs)
        values.append(nll + hinge)
    return sum(values) / len(values) if values else 0.0


def tiny_batch(seed=0, b=5, k=3, e=4, labels=3):
    g = torch.Generator().manual_seed(seed)
    phi, psi = torch.randn(b, e, generator=g, dtype=torch.float64), torch.randn(b, e, generator=g, dtype=torch.float64)
    psi_nb = torch.randn(b, k, e, generator=g, dtype=torch.float64)
    mask = torch.rand(b, k, generator=g) < 0.7
    mask[0] = False                                   # a row without a valid negative
    return phi, psi, psi_nb, mask


@pytest.mark.parametrize("softmax_over, margin", [("distances", 0.0), ("similarities", 0.0), ("distances", 0.5)])
def test_way_one_is_the_softmax_nll_of_the_true_pair_plus_the_hinge(softmax_over, margin):
    phi, psi, psi_nb, mask = tiny_batch()
    got = module.way_one_loss(phi, psi, psi_nb, mask, margin, softmax_over)
    d2_true = np.array([float(((phi[i] - psi[i]) ** 2).sum()) for i in range(5)])
    d2_neg = np.array([[float(((phi[i] - psi_nb[i, j]) ** 2).sum()) for j in range(3)] for i in range(5)])
    assert float(got) == pytest.approx(loop_pair_loss(d2_true, d2_neg, mask.numpy(), margin, softmax_over), rel=1e-9)


def test_way_two_takes_the_label_anchor_against_its_neighbours_images():
    phi, psi, _, mask = tiny_batch(seed=3)
    g = torch.Generator().manual_seed(4)
    phi_nb = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)   # φ of each anchor's neighbour slots
    got = module.way_two_loss(psi, phi, phi_nb, mask, 0.0, "distances")
    values = []
    for a in range(5):                                            # anchor ψ(y_a), true φ(x_a)
        negs = [phi_nb[a, j] for j in range(3) if mask[a, j]]
        if not negs:
            continue
        d2 = [float(((psi[a] - x) ** 2).sum()) for x in [phi[a], *negs]]
        nll = -(-d2[0] - math.log(sum(math.exp(-d) for d in d2)))
        values.append(nll + sum(max(0.0, math.sqrt(d2[0]) - math.sqrt(d)) for d in d2[1:]))
    assert len(values) == int(mask.any(dim=1).sum()) and float(got) == pytest.approx(sum(values) / len(values),
                                                                                     rel=1e-9)


def test_the_total_loss_is_bce_plus_alpha_metric_plus_beta_reconstruction():
    phi, psi, psi_nb, mask = tiny_batch(seed=5)
    y = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    logits, rec = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    phi_nb = torch.randn(5, 2, 4, dtype=torch.float64)
    image_mask = torch.rand(5, 2) < 0.6
    outputs = {"logits": logits, "phi": phi, "psi": psi, "psi_neighbours": psi_nb, "neighbour_mask": mask,
               "reconstruction": rec, "phi_neighbours": phi_nb, "neighbour_image_mask": image_mask}
    alpha, beta, lam = 0.7, 1.3, 0.4
    total, terms = retdm(alpha=alpha, beta=beta, way_two_weight=lam).compute_loss(outputs, y)
    p = torch.sigmoid(logits)
    bce = float(np.mean([-(y[i, c] * math.log(p[i, c]) + (1 - y[i, c]) * math.log(1 - p[i, c]))
                         for i in range(5) for c in range(3)]))
    mse = float(np.mean([(rec[i, c] - y[i, c]) ** 2 for i in range(5) for c in range(3)]))
    one = float(module.way_one_loss(phi, psi, psi_nb, mask))
    two = float(module.way_two_loss(psi, phi, phi_nb, image_mask))
    assert float(terms["cls"]) == pytest.approx(bce, rel=1e-9)
    assert float(terms["rec"]) == pytest.approx(mse, rel=1e-9)
    assert float(terms["metric"]) == pytest.approx(one + lam * two, rel=1e-9)            # Eq. (8)
    assert float(total) == pytest.approx(bce + alpha * (one + lam * two) + beta * mse, rel=1e-9)  # Eq. (13)
    no_images = {k: v for k, v in outputs.items() if k != "phi_neighbours"}   # validation: no way two
    _, terms = retdm().compute_loss(no_images, y)
    assert "way_two" not in terms and float(terms["metric"]) == pytest.approx(one, rel=1e-9)
    total, terms = retdm(alpha=0.0, beta=0.0).compute_loss(outputs, y)     # the BCE ablation
    assert set(terms) == {"cls"} and float(total) == pytest.approx(bce, rel=1e-9)


def test_a_zero_distance_gives_a_finite_gradient():
    phi = torch.zeros(2, 3, requires_grad=True)
    loss = module.way_one_loss(phi, torch.zeros(2, 3), torch.ones(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(phi.grad).all()


# ----------------------------------------------------------------------------- stages and sampler
def test_stage_epochs_split_the_budget_by_largest_remainder():
    assert module.stage_epochs(10, (0.3, 0.2, 0.5)) == [3, 2, 5]
    assert module.stage_epochs(2, (0.3, 0.2, 0.5)) == [1, 0, 1]
    assert module.stage_epochs(7, (0.3, 0.2, 0.5)) == [2, 1, 4]
    assert all(sum(module.stage_epochs(e, (0.3, 0.2, 0.5))) == e for e in range(30))
    assert retdm(epochs=10, alpha=0.0, beta=0.0)._stage_epochs() == [10, 0, 0]


class Recording:
    """A mixin for RETDM and its ablations recording the state after every epoch, each epoch's batches and the way-two masks."""

    def stages(self):
        self.snapshots = [{k: v.clone() for k, v in self.model_.state_dict().items()}]
        self.epoch_batches, self.masks = [], []
        return super().stages()

    def epoch_callbacks(self):
        return [lambda record: self.snapshots.append({k: v.clone() for k, v in self.model_.state_dict().items()})]

    def train_batch_indices(self, n, epoch):
        batches = super().train_batch_indices(n, epoch)
        self.epoch_batches.append(batches)
        return batches

    def forward_train(self, model, batch):
        out = super().forward_train(model, batch)
        if model.training:
            self.masks.append((batch.index.numpy().copy(), out.get("neighbour_image_mask")))
        return out


def recording(name: str = "retdm"):
    """The registered class ``name`` (looked up now: the plug-in registry may have been reloaded) with
    the recording mixin."""
    return type("Recording", (Recording, plugins.get("methods", name)), {})


def test_the_three_stages_freeze_what_they_do_not_train_bit_for_bit():
    method = recording()(**TINY, epochs=3, classification_fraction=1 / 3, metric_fraction=1 / 3, val_fraction=0.2)
    method.fit(labelled(kind="image"))
    assert [h["stage"] for h in method.history_] == ["classification", "metric", "joint"]
    start, after1, after2, after3 = method.snapshots
    image_keys = [k for k in start if k.startswith(("encoder.", "head.image_embed.", "head.classifier."))]
    label_keys = [k for k in start if k.startswith(("head.label_embed.", "head.reconstruct."))]
    assert any("running_mean" in k for k in image_keys)          # small-cnn's BatchNorm statistics
    for k in image_keys:                                          # stage 2: the image path fixed
        assert torch.equal(after1[k], after2[k]), k
    for k in label_keys:                                          # stage 1: the label path untouched
        assert torch.equal(start[k], after1[k]), k
        assert not torch.equal(after1[k], after2[k]), k
    assert any(not torch.equal(after1[k], start[k]) for k in image_keys)
    assert all(any(not torch.equal(after3[k], after2[k]) for k in keys) for keys in (image_keys, label_keys))
    assert "val_cls" in method.history_[0] and "val_way_two" not in method.history_[-1]
    assert all(p.requires_grad for p in method.model_.parameters())


def test_the_sampler_keeps_plain_batches_of_anchors_and_adds_their_neighbour_images_for_way_two():
    data = labelled(n=40)
    method = recording()(**{**TINY, "batch_size": 16}, epochs=2, classification_fraction=0.5, metric_fraction=0.0,
                       n_neighbours=4, way_two_negatives=2, val_fraction=0.0)
    method.fit(data)
    stage1, stage3 = method.epoch_batches
    assert sorted(np.concatenate(stage1)) == list(range(40))      # stage 1: a plain permutation
    neighbours, valid = method.neighbours_.numpy(), method.neighbour_valid_.numpy()
    sizes = [16, 16, 8]                                           # ⌈40 / 16⌉ batches of anchors, as stage 1
    assert [len(b) for b in stage3] == [3 * s for s in sizes]     # each anchor followed by 2 slots
    anchors = [b[:s] for b, s in zip(stage3, sizes, strict=True)]
    assert sorted(np.concatenate(anchors)) == list(range(40))     # every example is an anchor once
    for batch, size in zip(stage3, sizes, strict=True):
        for a, i in enumerate(batch[:size]):
            slots = batch[size + 2 * a: size + 2 * a + 2]
            own = set(neighbours[i][valid[i]].tolist())
            filled = min(2, len(own))
            assert set(slots[:filled].tolist()) <= own and len(set(slots[:filled].tolist())) == filled
            assert all(j == i for j in slots[filled:])            # padding: the anchor itself, masked
    for (index, mask), batch, size in zip(method.masks, stage3, sizes, strict=True):
        assert index.tolist() == batch.tolist()
        expected = [[j < min(2, int(valid[i].sum())) for j in range(2)] for i in batch[:size]]
        assert mask.tolist() == expected


def test_the_neighbour_mask_is_honoured_when_fewer_than_k_candidates_exist():
    Y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 2, dtype=np.uint8)
    data = MultiLabelData("few", {"a": np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)}, Y,
                          ("a", "b", "c"))
    method = retdm(**TINY, epochs=1, n_neighbours=11, way_two_negatives=None, val_fraction=0.0).fit(data)
    valid = method.neighbour_valid_
    others = [int((Y != y).any(axis=1).sum()) for y in Y]        # candidates: another label set (8 or 10 < k)
    assert valid.sum(dim=1).tolist() == others and max(others) < 11 and not valid[:, 10].any()
    (index,) = method.train_batch_indices(12, 1)                  # a joint-stage batch: 12 anchors, 11 slots each
    rows = next(method._source(data, train=True).batches([index]))
    method.model_.train()
    out = method.forward_train(method.model_, rows)
    anchors = index[:12]
    assert torch.equal(out["neighbour_mask"], valid[anchors])
    assert out["neighbour_image_mask"].sum(dim=1).tolist() == [others[i] for i in anchors]
    assert float(method.compute_loss(out, rows.y[:12])[1]["way_two"].detach()) > 0
    valid, rows = valid[anchors], rows.y[:12]
    out = {k: v.detach() for k, v in out.items()}
    loss = float(method.compute_loss(out, rows)[1]["way_one"])
    # empty slots at φ itself: they change nothing
    out["psi_neighbours"] = torch.where(valid.unsqueeze(-1), out["psi_neighbours"], out["phi"].unsqueeze(1))
    assert float(method.compute_loss(out, rows)[1]["way_one"]) == pytest.approx(loss, rel=1e-6)
    out["neighbour_mask"] = torch.ones_like(valid)                # (and would, if it were not masked)
    assert float(method.compute_loss(out, rows)[1]["way_one"]) != pytest.approx(loss, rel=1e-3)


def test_one_way_and_bce_train_on_plain_batches():
    for name, stages in [("retdm_oneway", ["classification", "metric", "joint"]), ("retdm_bce", None)]:
        method = recording(name)(
            **TINY, epochs=3, classification_fraction=1 / 3, metric_fraction=1 / 3, val_fraction=0.0)
        method.fit(labelled(n=24))
        assert [h.get("stage") for h in method.history_] == (stages or [None] * 3)
        assert all(mask is None for _, mask in method.masks)
        assert all(sorted(np.concatenate(e)) == list(range(24)) for e in method.epoch_batches)


def test_validation_neighbours_are_the_nearest_training_label_vectors():
    data = labelled(n=36)
    method = retdm(**TINY, epochs=1, val_fraction=0.25).fit(data)
    query = torch.tensor([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    index, valid = method.nearest_training_labels(query)
    Y = method.train_labels_.numpy().astype(int)
    assert as_lists(index.numpy(), valid.numpy()) == brute_force_neighbours(query.numpy().astype(int), Y, 10)


# ----------------------------------------------------------------------------- VGG fc6
def test_vgg_fc6_comes_from_the_trunks_checkpoint(tmp_path, monkeypatch):
    from bench import backbones

    state = {"features.0.weight": torch.zeros(1), "classifier.0.weight": torch.randn(6, 8 * 49),
             "classifier.0.bias": torch.randn(6), "classifier.6.weight": torch.randn(2, 6)}
    path = tmp_path / "vgg16-fake.pth"
    torch.save(state, path)
    monkeypatch.setattr(backbones, "ensure_checkpoint", lambda name, weights: path)
    got = backbones.classifier_state_dict("vgg16", True)
    assert set(got) == {"classifier.0.weight", "classifier.0.bias", "classifier.6.weight"}
    assert backbones.classifier_state_dict("vgg16", False) == {}
    assert backbones.classifier_state_dict("small-cnn", False) == {}
    embed = module.ImageEmbedding(8, (14, 14), "vgg", embed_dim=4, fc_width=6)
    retdm(backbone="vgg16", pretrained=True)._load_fc6(embed)
    assert torch.equal(embed.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(embed.fc6.bias, state["classifier.0.bias"])
    x = torch.randn(2, 14 * 14, 8)            # pool5 + 7 x 7 average + flatten, as torchvision's VGG
    fmap = x.transpose(1, 2).reshape(2, 8, 14, 14)
    flat = torch.nn.AdaptiveAvgPool2d((7, 7))(torch.nn.MaxPool2d(2)(fmap)).flatten(1)
    embed.eval()
    expected = embed.fc7(F.relu(embed.fc6(flat)))
    torch.testing.assert_close(embed(x), expected)


def test_bad_settings_are_one_line_errors():
    from bench.errors import BenchError

    for bad, match in [({"softmax_over": "x"}, "softmax_over must be one of"),
                       ({"classification_fraction": 0.8, "metric_fraction": 0.4}, "sum <= 1"),
                       ({"way_two_negatives": 0}, "way_two_negatives"), ({"min_lr": 1.0}, "min_lr <= lr")]:
        with pytest.raises(BenchError, match=match):
            retdm(**bad)._check_params()



# ----------------------------------------------------------------------------- issue 26: guards
def test_validation_batches_find_neighbours_by_label_distance_to_the_training_table():
    data = labelled(n=36)
    method = retdm(**TINY, epochs=1, val_fraction=0.25).fit(data)
    val = data.subset(np.arange(30, 36))
    seen = []
    head = method.head_.label_embed
    hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    try:
        method.validate(val)
    finally:
        hook.remove()
    Y = method.train_labels_.numpy().astype(int)
    expected = brute_force_neighbours(val.Y.astype(int), Y, 10)   # by Hamming distance, not by row index
    neighbour_labels = seen[1]                                      # ψ(y) first, then ψ of the neighbours
    assert neighbour_labels.shape == (6, 10, 5)
    for row, nbs in enumerate(expected):
        assert neighbour_labels[row, :len(nbs)].numpy().astype(int).tolist() == Y[nbs].tolist()
    assert not torch.equal(neighbour_labels, method.train_labels_[method.neighbours_[:6]])  # own index's


def test_the_joint_stage_starts_at_the_stated_learning_rate_and_stage_one_logs_only_bce():
    method = retdm(**TINY, epochs=6, classification_fraction=0.5, metric_fraction=0.0, lr=0.1, min_lr=0.001,
                   lr_patience=0, val_fraction=0.2)
    worse = iter(range(100))
    method.validate = lambda val: {"val_loss": float(next(worse)), "val_cls": float(next(worse)), "val_mAP": 0.0}
    method.fit(labelled(n=36))
    stages = [h["stage"] for h in method.history_]
    lrs = [h["lr"] for h in method.history_]
    assert stages == ["classification"] * 3 + ["joint"] * 3
    assert lrs[:3] == [0.1, 0.1, pytest.approx(0.01)]             # stage 1's plateau schedule cut it
    assert lrs[3] == 0.1                                           # the joint stage starts at lr again
    for record in method.history_[:3]:                             # stage 1 trains, and logs, L_cls alone
        assert {k for k in record if not k.startswith("val_")} == {"epoch", "stage", "lr", "loss", "cls", "time_s"}
        assert record["loss"] == record["cls"]
    assert {"way_one", "way_two", "rec", "metric"} <= set(method.history_[3])


def test_the_gradient_probe_matches_the_hand_computed_gradient_on_phi():
    method = retdm(**TINY, alpha=0.5)
    method._probe_step, method._probes = 0, {}
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(4, 3, generator=g, requires_grad=True)
    W, b = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    psi, psi_nb = torch.randn(4, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    outputs = {"logits": phi @ W.T + b, "phi": phi, "psi": psi, "psi_neighbours": psi_nb,
               "neighbour_mask": torch.ones(4, 2, dtype=torch.bool), "reconstruction": torch.zeros(4, 2)}
    _, terms = method.compute_loss(outputs, y)
    method._phi_batch = phi
    method._probe(terms)
    z = (phi @ W.T + b).detach()                                  # d mean BCE / d φ = (σ(z) - y) W / (B L)
    cls = float(((torch.sigmoid(z) - y) @ W / 8).norm())
    phi_ = phi.detach().clone().requires_grad_(True)              # the metric's by finite autograd on a copy
    metric = 0.5 * module.way_one_loss(phi_, psi, psi_nb, outputs["neighbour_mask"])
    metric.backward()
    got = method._probes
    assert got["grad_phi_cls"] == [pytest.approx(cls, rel=1e-5)]
    assert got["grad_phi_metric"] == [pytest.approx(float(phi_.grad.norm()), rel=1e-5)]
    assert got["grad_share_metric"][0] == pytest.approx(got["grad_phi_metric"][0] / (cls + got["grad_phi_metric"][0]))
    for _ in range(method.GRAD_PROBE_EVERY - 1):                  # then every GRAD_PROBE_EVERY steps
        method._probe(terms)
    assert len(method._probes["grad_phi_cls"]) == 1
    method._probe(terms)
    assert len(method._probes["grad_phi_cls"]) == 2


def test_the_joint_stage_history_holds_the_gradient_shares():
    method = retdm(**TINY, epochs=3, classification_fraction=1 / 3, metric_fraction=1 / 3, val_fraction=0.0)
    method.fit(labelled(n=36))
    assert not any(k.startswith("grad_") for h in method.history_[:2] for k in h)   # nothing trains φ by L there
    joint = method.history_[2]
    assert joint["stage"] == "joint" and 0 < joint["grad_share_metric"] < 1
    assert joint["grad_phi_cls"] > 0 and joint["grad_phi_metric"] > 0
