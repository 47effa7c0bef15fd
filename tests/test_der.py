"""DER (methods/der.py): Eqs. 1-16 against readable per-label loops, the pull term against Eq. (4)'s pairwise sum, images
without positive (or negative) labels, gradients, the ablation switches, and training through the
harness on the default dataset (image view with the small CNN, and the feature-token view)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import plugin_module

from bench import plugins, runner
from bench.cli import main
from bench.errors import BenchError
from bench.store import ResultStore


@pytest.fixture
def der():
    """The plug-in module (imported by the plug-in loader under a private name)."""
    return plugin_module("methods", "der")


# ---------------------------------------------------------------- readable references (one image)
def pairwise_sum(vectors):
    """Eq. (4): Σ_{j∈S} Σ_{k<j, k∈S} ‖a_j - a_k‖², written as the double loop."""
    total = 0.0
    for j in range(len(vectors)):
        for k in range(j):
            total += float(((vectors[j] - vectors[k]) ** 2).sum())
    return total


def reference_losses(a, y, margin=1.0, hinge="per_label"):
    """Eq. (7) and Eq. (10) for ONE image, by a loop over its labels. Returns (L_lce, L_lr).

    ``hinge="on_sum"``: the push term as the prose after Eq. (7) writes it, [1 - Σ_k ‖a_k - ā‖²]_+."""
    labels = range(len(y))
    positives = [c for c in labels if y[c] == 1]
    negatives = [c for c in labels if y[c] == 0]
    if not positives:
        return 0.0, 0.0
    centroid = sum(a[j] for j in positives) / len(positives)
    dist = {c: float(((a[c] - centroid) ** 2).sum()) for c in labels}
    if hinge == "per_label":
        push = sum(max(0.0, margin - dist[k]) for k in negatives)
    else:
        push = max(0.0, margin - sum(dist[k] for k in negatives)) if negatives else 0.0
    lce = sum(dist[j] for j in positives) + push
    if not negatives:
        return lce, 0.0
    lr = max(0.0, margin + max(dist[j] for j in positives) - min(dist[k] for k in negatives))
    return lce, lr


def random_batch(batch=6, labels=7, dim=5, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(batch, labels, dim, generator=g, dtype=torch.float64)
    y = (torch.rand(batch, labels, generator=g) < 0.4).double()
    y[0] = 0          # no positive label
    y[1] = 1          # every label positive
    y[2] = 0
    y[2, 3] = 1       # a single positive label (|S| = 1)
    return a, y


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hinge", ["per_label", "on_sum"])
def test_embedding_and_ranking_losses_match_a_loop_over_the_labels_of_each_image(der, seed, hinge):
    a, y = random_batch(seed=seed)
    refs = [reference_losses(a[i], y[i], hinge=hinge) for i in range(len(y))]
    lce = der.label_correlation_embedding_loss(a, y, hinge=hinge)
    lr = der.label_ranking_loss(a, y)
    assert float(lce) == pytest.approx(np.mean([r[0] for r in refs]), abs=1e-6)
    assert float(lr) == pytest.approx(np.mean([r[1] for r in refs]), abs=1e-6)
    # the batch really exercises both the hinge and the positive pull (not a trivially zero case)
    assert float(lce) > 0 and float(lr) > 0


def test_embedding_pull_term_is_eq4_pairwise_sum_divided_by_set_size(der):
    a = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([[1, 1, 0, 1, 0, 0, 1]], dtype=torch.float64)
    far = a.clone()
    far[0, y[0] == 0] += 100.0   # negatives far away: their hinge terms vanish
    positives = far[0, y[0] == 1]
    expected = pairwise_sum(positives) / len(positives)
    assert float(der.label_correlation_embedding_loss(far, y)) == pytest.approx(expected, abs=1e-6)


def test_images_without_any_positive_or_negative_label_give_finite_losses_and_gradients(der):
    a = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.float64)
    lce, lr = der.label_correlation_embedding_loss(a, y), der.label_ranking_loss(a, y)
    (lce + lr).backward()
    assert torch.isfinite(lce) and torch.isfinite(lr)
    assert torch.isfinite(a.grad).all()
    assert a.grad[0].abs().sum() == 0          # no positive label: no centroid, no loss, no gradient
    only_empty = torch.zeros(2, 4, dtype=torch.float64)
    assert float(der.label_correlation_embedding_loss(a[:2].detach(), only_empty)) == 0.0
    assert float(der.label_ranking_loss(a[:2].detach(), only_empty)) == 0.0
    # all labels positive: L_lce is the pull term alone, L_lr undefined -> 0
    everything = torch.ones(1, 4, dtype=torch.float64)
    vec = a[1:2].detach()
    pull = float(((vec[0] - vec[0].mean(0)) ** 2).sum())
    assert float(der.label_correlation_embedding_loss(vec, everything)) == pytest.approx(pull, abs=1e-12)
    assert float(der.label_ranking_loss(vec, everything)) == 0.0


def test_the_hinge_readings_differ_where_negatives_are_far_in_total_but_not_each(der):
    a = torch.zeros(1, 3, 1, dtype=torch.float64)
    a[0, 1, 0], a[0, 2, 0] = 0.8, 0.8              # label 0 positive (ā = 0); ‖a_k - ā‖² = 0.64 each
    y = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(der.label_correlation_embedding_loss(a, y, hinge="per_label")) == pytest.approx(2 * 0.36)
    assert float(der.label_correlation_embedding_loss(a, y, hinge="on_sum")) == 0.0   # 1 - 1.28 < 0


def test_losses_run_in_float32_when_the_forward_pass_runs_in_bfloat16(monkeypatch, one_torch_thread):
    """Hook 11 on DER: under a bf16 autocast (CPU's, standing in for CUDA's) the head's outputs are
    bf16, yet Eqs. (7), (10), (15) see float32 outputs and labels and give float32 losses."""
    data = runner.load_dataset("mnist-mosaic", "unused").subset(np.arange(64))
    method = small_run(inputs="features", epochs=1, steps_per_epoch=1, batch_size=8).fit(data)
    monkeypatch.setattr(method, "autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    seen = {}
    forward, loss = method.forward_train, method.compute_loss
    monkeypatch.setattr(method, "forward_train", lambda m, b: seen.setdefault("raw", forward(m, b)))
    monkeypatch.setattr(method, "compute_loss", lambda o, y: seen.setdefault("loss", (o, y, loss(o, y)))[2])
    batch = next(method._source(data, train=True).batches([np.arange(8)]))
    total, terms = method.training_loss(batch)
    assert seen["raw"]["logits"].dtype == torch.bfloat16          # the autocast really was on
    outputs, y, _ = seen["loss"]
    assert all(v.dtype == torch.float32 for v in outputs.values()) and y.dtype == torch.float32
    assert total.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    expected, _ = loss({k: v.float() for k, v in seen["raw"].items()}, batch.y)
    assert float(total.detach()) == float(expected.detach())


def test_classification_loss_is_eq15_summed_over_labels_and_averaged_over_images(der):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(4, 3, generator=g) < 0.5).double()
    loop = 0.0
    for i in range(4):
        for c in range(3):
            p = 1 / (1 + math.exp(-float(logits[i, c])))
            loop -= float(y[i, c]) * math.log(p) + (1 - float(y[i, c])) * math.log(1 - p)
    assert float(der.classification_loss(logits, y)) == pytest.approx(loop / 4, abs=1e-9)
    # ML-GCN's reading: the mean over the C labels
    assert float(der.classification_loss(logits, y, reduction="mean")) == pytest.approx(loop / 4 / 3, abs=1e-9)


# ---------------------------------------------------------------- the head
def test_cadms_are_the_classifier_weights_applied_at_every_position(der):
    torch.manual_seed(0)
    head = der.DERHead(width=6, n_tokens=4 * 3, n_labels=5, embed_width=12).double()
    tokens = torch.randn(2, 12, 6, dtype=torch.float64)
    theta = head.fcls.weight.detach()  # [C, d]
    cadm = der.class_aware_maps(tokens, theta)
    for b in range(2):
        for c in range(5):
            for n in range(12):     # Eq. (1): A_c = θ_cᵀ X at each of the h*w positions, no bias
                assert float(cadm[b, c, n]) == pytest.approx(float(theta[c] @ tokens[b, n]), abs=1e-12)


def test_two_streams_and_their_average(der):
    torch.manual_seed(0)
    head = der.DERHead(width=6, n_tokens=8, n_labels=5, embed_width=8).double().requires_grad_(False)
    tokens = torch.randn(3, 8, 6, dtype=torch.float64)
    out = head(tokens)
    theta, bias = head.fcls.weight, head.fcls.bias
    gmp = tokens.max(dim=1).values
    first = gmp @ theta.T + bias                                   # Eq. (12)
    second = torch.tensor([[max(float(theta[c] @ tokens[b, n]) for n in range(8)) for c in range(5)]
                           for b in range(3)], dtype=torch.float64)       # Eq. (13): GMP of each CADM
    torch.testing.assert_close(out["logits_first"], first)
    torch.testing.assert_close(out["logits_second"], second)
    torch.testing.assert_close(out["logits"], (first + second) / 2)          # Eq. (14)
    assert out["label_vectors"].shape == (3, 5, 8)                             # a_c, width h*w
    baseline = der.DERHead(width=6, n_tokens=8, n_labels=5, disentangle=False)
    assert "label_vectors" not in baseline(tokens.float())


def test_label_vectors_are_f_embed_of_each_flattened_cadm(der):
    torch.manual_seed(0)
    head = der.DERHead(width=3, n_tokens=6, n_labels=4, embed_width=6).double().requires_grad_(False)
    tokens = torch.randn(2, 6, 3, dtype=torch.float64)
    vectors = head(tokens)["label_vectors"]
    lin1, lin2 = head.embed[0], head.embed[2]
    for b in range(2):
        for c in range(4):           # Eq. (3): a_c = W2 ReLU(W1 f_flat(A_c) + b1) + b2
            flat = torch.stack([head.fcls.weight[c] @ tokens[b, n] for n in range(6)])
            expected = lin2.weight @ torch.relu(lin1.weight @ flat + lin1.bias) + lin2.bias
            torch.testing.assert_close(vectors[b, c], expected)


def test_the_total_loss_reaches_classifier_embedding_and_backbone_tokens(der):
    torch.manual_seed(0)
    method = plugins.get("methods", "der")()
    head = der.DERHead(width=6, n_tokens=9, n_labels=5, embed_width=9)
    tokens = torch.randn(4, 9, 6, requires_grad=True)
    y = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    outputs = head(tokens)
    total, terms = method.compute_loss(outputs, y)
    assert set(terms) == {"cls", "lce", "rank"}
    expected = terms["cls"] + 0.5 * terms["lce"] + 0.05 * terms["rank"]          # Eq. (16)
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    total.backward()
    for name, param in [("fcls", head.fcls.weight), ("embed 1", head.embed[0].weight),
                        ("embed 2", head.embed[2].weight), ("tokens", tokens)]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    # L_lce and L_lr alone also send gradient back through f_embed into θ_fcls (the CADMs)
    head.zero_grad()
    embed_only = der.label_correlation_embedding_loss(head(tokens.detach())["label_vectors"], y)
    embed_only.backward()
    assert head.fcls.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- ablation switches
def test_ablation_switches(der):
    tokens = torch.randn(3, 8, 6)
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    baseline = der.DERHead(width=6, n_tokens=8, n_labels=5, disentangle=False)
    out = baseline(tokens)
    assert "label_vectors" not in out
    torch.testing.assert_close(out["logits"], out["logits_first"])     # GMP + FC only
    DER = plugins.get("methods", "der")
    total, terms = DER(alpha=0, beta=0).compute_loss(out, y)
    assert set(terms) == {"cls"} and total is terms["cls"]
    joint = der.DERHead(width=6, n_tokens=8, n_labels=5)(tokens)
    torch.testing.assert_close(DER().scores(joint), torch.sigmoid(joint["logits"]))


def test_registered_ablations_fix_their_switches_and_hide_them_from_hyper_parameters():
    expected = {"der_baseline": {"disentangle": False, "alpha": 0.0, "beta": 0.0},
                "der_disentangle": {"alpha": 0.0, "beta": 0.0}, "der_embed": {"beta": 0.0}}
    full = set(plugins.get("methods", "der")().get_params())
    for name, fixed in expected.items():
        cls = plugins.get("methods", name)
        assert cls.ablation_of == "der"
        method = cls(epochs=3)
        assert set(method.get_params()) == full - set(fixed)
        assert method.epochs == 3 and all(getattr(method, k) == v for k, v in fixed.items())


def test_bad_switches_are_one_line_errors(der):
    encoder = type("Enc", (), {"width": 4, "n_tokens": 6})()
    DER = plugins.get("methods", "der")
    # the checks run before any job (bench.params.validate) and first thing in fit: _check_params
    with pytest.raises(BenchError, match="set alpha=0 and beta=0"):
        DER(disentangle=False)._check_params()
    with pytest.raises(BenchError, match="bce_reduction must be one of sum, mean, got 'max'"):
        DER(bce_reduction="max")._check_params()
    with pytest.raises(BenchError, match="lce_hinge must be one of per_label, on_sum"):
        DER(lce_hinge="outside")._check_params()
    with pytest.raises(BenchError, match="alpha and beta must be >= 0, got alpha=-1.0"):
        DER(alpha=-1.0)._check_params()
    assert DER(disentangle=False, alpha=0, beta=0).build_head(encoder, 3).embed is None
    assert DER(beta=0).build_head(encoder, 3).embed[0].in_features == 6      # f_embed width h*w


# ---------------------------------------------------------------- through the pipeline (CPU, fast)
def small_params():
    return dict(backbone="small-cnn", pretrained=False, image_size=None, resize=None, batch_size=16,
                device="cpu", num_workers=0, random_state=0)


def small_run(**overrides):
    return plugins.get("methods", "der")(**{**small_params(), **overrides})


def test_der_trains_on_the_default_dataset_image_view_through_the_cli(tmp_path, one_torch_thread):
    rc = main(["run", "--method", "der", "--dataset", "mnist-mosaic", "--protocol", "holdout", "--seeds", "0",
               "--device", "cpu", "--no-progress", "--no-mlflow", "--set", "backbone=small-cnn",
               "--set", "pretrained=false", "--set", "image_size=none", "--set", "resize=none",
               "--set", "epochs=2", "--set", "steps_per_epoch=2", "--set", "batch_size=16",
               "--set", "num_workers=0"])
    assert rc == 0
    (record,) = ResultStore(tmp_path / "results").records("mnist-mosaic", "der")
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite([h["cls"], h["lce"], h["rank"], h["loss"]]).all() for h in history)
    assert 0.0 <= record["metrics"]["mAP"] <= 1.0


def test_der_on_the_feature_token_view_learns_and_readouts_share_one_network(one_torch_thread):
    data = runner.load_dataset("mnist-mosaic", "unused")
    train, test = data.subset(np.arange(0, 600)), data.subset(np.arange(1600, 2000))
    kwargs = dict(inputs="features", epochs=4, batch_size=32, lr=0.01)
    joint = small_run(**kwargs).fit(train)
    assert joint.encoder_.grid == (1, 4) and joint.head_.embed[0].in_features == 4   # M modality tokens
    scores = joint.predict_scores(test)
    assert np.isfinite(scores).all() and scores.shape == test.Y.shape
    from sklearn.metrics import average_precision_score
    chance = test.Y.mean()                                        # mAP of uninformative scores
    assert average_precision_score(test.Y, scores, average="macro") > chance + 0.3
    # Table V: the other confidences are readouts of the same trained network
    readouts = joint.predict_readouts(test)
    assert set(readouts) == {"first_stream", "second_stream"}
    outputs = {k: v.astype(np.float64) for k, v in joint.predict_outputs(test).items()}

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    np.testing.assert_allclose(readouts["first_stream"], sigmoid(outputs["logits_first"]), rtol=1e-6)
    np.testing.assert_allclose(readouts["second_stream"], sigmoid(outputs["logits_second"]), rtol=1e-6)
    np.testing.assert_allclose(scores, sigmoid((outputs["logits_first"] + outputs["logits_second"]) / 2), rtol=1e-5)
    assert not np.allclose(readouts["first_stream"], readouts["second_stream"])
    baseline = plugins.get("methods", "der_baseline")(**{**small_params(), **kwargs}).fit(train)
    assert baseline.predict_readouts(test) == {}                  # one stream: nothing else to read out


def test_class_maps_are_the_cadms_on_the_backbone_grid_clipped_at_zero(one_torch_thread):
    data = runner.load_dataset("mnist-mosaic", "unused")
    method = small_run(epochs=1, steps_per_epoch=1).fit(data.subset(np.arange(32)))
    images = data.subset(np.arange(100, 103))
    maps = method.class_maps(images)
    assert maps.shape == (3, data.n_labels, 14, 14) and maps.dtype == np.float32 and (maps >= 0).all()
    with torch.no_grad():
        pixels = torch.as_tensor(images.views["image"].array).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        tokens = method.encoder_.eval()(pixels)                                   # X as [B, h*w, d]
        theta = method.head_.fcls.weight
    for b in range(3):
        for c in (0, 4, 9):
            for i, j in [(0, 0), (3, 7), (13, 13)]:                                # Eq. (1) at (i, j)
                expected = max(float(theta[c] @ tokens[b, i * 14 + j]), 0.0)
                assert maps[b, c, i, j] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert maps.max() > 0
