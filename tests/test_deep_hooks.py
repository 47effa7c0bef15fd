"""The hooks of the shared training loop (bench/deep.py, bench/training.py), each on a tiny model:
what RETDM, Order-Free RNN and CMSG need from it (numbers as in the DeepMethod docstring)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import runner
from bench.backbones import Backbone
from bench.data import ImageView, MultiLabelData
from bench.deep import DeepMethod
from bench.errors import BenchError
from bench.image import train_transform
from bench.metrics import METRICS, evaluate
from bench.protocols import validation_split
from bench.training import Stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- a tiny method
class LinearHead(nn.Module):
    def __init__(self, width: int, n_labels: int):
        super().__init__()
        self.fc = nn.Linear(width, n_labels)

    def forward(self, tokens):
        return {"logits": self.fc(tokens.mean(dim=1))}


class Toy(DeepMethod):
    """Mean over tokens + a linear layer, BCE; every optional hyper-parameter the hooks need."""

    name = "toy"

    def __init__(self, backbone="small-cnn", pretrained=False, epochs=2, batch_size=8, lr=0.1, inputs="auto",
                 val_fraction=0.0, patience=None, monitor="val_mAP", amp=True, ema_decay=None, flip=True,
                 freeze_backbone=False, cache_features=False, image_size=None, resize=None, five_crop=None,
                 width=None, device="cpu", random_state=0):
        self.backbone = backbone
        self.pretrained = pretrained
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.inputs = inputs
        self.val_fraction = val_fraction
        self.patience = patience
        self.monitor = monitor
        self.amp = amp
        self.ema_decay = ema_decay
        self.flip = flip
        self.freeze_backbone = freeze_backbone
        self.cache_features = cache_features
        self.image_size = image_size
        self.resize = resize
        self.five_crop = five_crop
        self.width = width
        self.device = device
        self.random_state = random_state

    def build_head(self, encoder, n_labels):
        return LinearHead(encoder.width, n_labels)

    def compute_loss(self, outputs, y):
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], y)
        return bce, {"bce": bce}


def features(n=80, seed=0) -> MultiLabelData:
    """Two feature views, three labels driven by them, and an ``id`` view to trace rows."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
    Y = (np.c_[a[:, :2], b[:, :1]] + 0.3 * rng.normal(size=(n, 3)) > 0).astype(np.uint8)
    ids = np.arange(n, dtype=np.float32)[:, None]
    return MultiLabelData("features", {"id": ids, "a": a, "b": b}, Y, ("l0", "l1", "l2"))


def images(n=40, side=16, seed=0) -> MultiLabelData:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, 2)) < 0.5).astype(np.uint8)
    pix = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
    pix[Y[:, 0] == 1, : side // 2] += 150
    return MultiLabelData("pictures", {"image": ImageView(array=pix)}, Y, ("top", "other"))


def record_batches(method_cls):
    """``method_cls`` with a step callback that keeps every training batch's (index, y)."""
    class Recording(method_cls):
        def step_callbacks(self):
            self.batches_seen = []
            return [lambda model, batch: self.batches_seen.append((batch.index.cpu().numpy().copy(),
                                                                   batch.y.cpu().numpy().copy()))]
    return Recording


# ----------------------------------------------------------------------------- 1. set-up
def test_1_setup_sees_the_training_part_only_before_the_model_is_built():
    class WithSetup(Toy):
        def setup(self, train):
            self.setup_rows_ = train.views["id"][:, 0].astype(int)
            self.max_labels_ = int(train.Y.sum(axis=1).max())     # Order-Free RNN's T
            self.model_existed_ = hasattr(self, "model_")

        def build_head(self, encoder, n_labels):
            self.head_saw_ = self.max_labels_                     # set-up ran first
            return super().build_head(encoder, n_labels)

    data = features()
    method = WithSetup(inputs="features", val_fraction=0.25, epochs=1).fit(data)
    fit_part, val_part = validation_split(data, 0.25, 0)
    assert sorted(method.setup_rows_) == sorted(fit_part.views["id"][:, 0].astype(int))
    assert not set(method.setup_rows_) & set(val_part.views["id"][:, 0].astype(int))  # no validation leak
    assert method.head_saw_ == method.max_labels_ == int(fit_part.Y.sum(axis=1).max())
    assert not method.model_existed_


# ----------------------------------------------------------------------------- 2. label-conditioned forward
class LabelConditionedHead(nn.Module):
    """Classifier on the tokens plus, in training, a label network reconstructing y (RETDM's ψ, rec)."""

    def __init__(self, width, n_labels):
        super().__init__()
        self.fc = nn.Linear(width, n_labels)
        self.label_net = nn.Linear(n_labels, n_labels)
        self.seen_y = []

    def forward(self, tokens, y=None):
        out = {"logits": self.fc(tokens.mean(dim=1))}
        self.seen_y.append((self.training, None if y is None else y.detach().clone()))
        if y is not None:
            out["reconstruction"] = self.label_net(y)
        return out


class LabelConditioned(Toy):
    def build_head(self, encoder, n_labels):
        return LabelConditionedHead(encoder.width, n_labels)

    def forward_train(self, model, batch):
        return model(batch.inputs, y=batch.y)

    def compute_loss(self, outputs, y):
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], y)
        rec = F.mse_loss(outputs["reconstruction"], y)
        return bce + rec, {"bce": bce, "rec": rec}


def test_2_the_training_forward_is_label_conditioned_and_the_model_is_one_module():
    data = features()
    method = record_batches(LabelConditioned)(inputs="features", epochs=2, val_fraction=0.25)
    method.fit(data)
    head = method.head_
    training_ys = [y for training, y in head.seen_y if training]
    assert [y.numpy().tolist() for y in training_ys] == [y.tolist() for _, y in method.batches_seen]  # their own
    validation_ys = [y for training, y in head.seen_y if not training]
    assert any(y is not None for y in validation_ys)   # the validation loss is the training objective's
    assert any(y is None for y in validation_ys)       # the validation scores are the prediction's
    assert "val_rec" in method.history_[0] and np.isfinite(method.history_[0]["val_rec"])
    head.seen_y.clear()
    method.predict_scores(data)
    assert head.seen_y and all(y is None for _, y in head.seen_y)      # prediction needs no labels
    initial = _initial_state(LabelConditioned(inputs="features", epochs=2, val_fraction=0.25), data)
    assert not torch.equal(method.model_.state_dict()["head.label_net.weight"], initial["head.label_net.weight"])
    assert any(m is head.label_net for m in method.model_.modules())   # trained as part of the one model


# ----------------------------------------------------------------------------- 3. updates and stages
def test_3a_a_custom_update_takes_several_optimizer_steps_per_batch():
    class TwoSteps(Toy):
        def stages(self):
            optimizer = self.make_optimizer(self.model_)
            return [Stage("train", epochs=self.epochs, optimizer=optimizer, update=self.two_steps)]

        def two_steps(self, batch, optimizer):
            for _ in range(2):                                  # e.g. one step per modality (RMLC)
                total, terms = self.training_loss(batch)
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
            return total.detach(), {k: v.detach() for k, v in terms.items()}

    optimizer_steps = []

    class Counting(TwoSteps):
        def stages(self):
            stages = super().stages()
            real = stages[0].optimizer.step
            stages[0].optimizer.step = lambda *a, **k: (optimizer_steps.append(1), real(*a, **k))[1]
            return stages

    method = Counting(inputs="features", epochs=2, batch_size=10).fit(features(n=40))
    assert len(optimizer_steps) == 2 * 2 * 4                 # 2 per batch, 4 batches, 2 epochs
    assert [h["epoch"] for h in method.history_] == [1, 2] and np.isfinite(method.history_[-1]["loss"])


class TwoStages(Toy):
    """Stage 1: the head alone (SGD); stage 2: the encoder alone, the head frozen (Adam), its own loss."""

    def stages(self):
        head, encoder = list(self.head_.parameters()), list(self.encoder_.parameters())
        return [Stage("head", epochs=2, optimizer=torch.optim.SGD(head, lr=0.1), loss=self.training_loss,
                      trainable=head),
                Stage("encoder", epochs=1, optimizer=torch.optim.Adam(encoder, lr=0.01), loss=self.stage2_loss,
                      trainable=encoder)]

    def stage2_loss(self, batch):
        total, terms = self.training_loss(batch)
        return 2 * total, {"doubled": 2 * total}

    def epoch_callbacks(self):
        self.snapshots = []
        return [lambda record: self.snapshots.append({k: v.clone() for k, v in self.model_.state_dict().items()})]


def test_3b_stages_have_their_own_parameters_optimizer_epochs_and_loss():
    method = TwoStages(inputs="features").fit(features())
    assert [(h["epoch"], h["stage"]) for h in method.history_] == [(1, "head"), (2, "head"), (3, "encoder")]
    assert "doubled" in method.history_[2] and "doubled" not in method.history_[0]
    first, second, third = method.snapshots
    encoder_keys = [k for k in first if k.startswith("encoder.embed")]
    head_keys = [k for k in first if k.startswith("head.")]
    for k in encoder_keys:   # stage 1 froze the encoder: bit-identical across its epochs
        assert torch.equal(first[k], second[k]), k
    for k in head_keys:      # stage 2 froze the head
        assert torch.equal(second[k], third[k]), k
        assert not torch.equal(first[k], second[k]), k
    assert any(not torch.equal(second[k], third[k]) for k in encoder_keys)
    assert all(p.requires_grad for p in method.model_.parameters())  # unfrozen again afterwards


# ----------------------------------------------------------------------------- 4. per-step callbacks, EMA
def test_4_an_ema_of_the_weights_is_kept_per_step_and_predicts():
    decay = 0.6
    snapshots = []

    class WithEMA(Toy):
        def step_callbacks(self):
            return [lambda model, batch: snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})]

    data = features(n=40)
    method = WithEMA(inputs="features", epochs=2, batch_size=10, ema_decay=decay).fit(data)
    assert len(snapshots) == 8
    # the average starts at the initial weights, then ema = decay * ema + (1 - decay) * w_t
    initial = _initial_state(Toy(inputs="features", epochs=2, batch_size=10), data)
    ema = {k: v.clone().float() for k, v in initial.items()}
    for snap in snapshots:
        for k in ema:
            ema[k] = decay * ema[k] + (1 - decay) * snap[k].float()
    for k, v in method.model_.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, ema[k].to(v.dtype), rtol=1e-5, atol=1e-6, msg=k)
    raw = snapshots[-1]
    assert any(not torch.allclose(raw[k], method.model_.state_dict()[k]) for k in raw if raw[k].is_floating_point())
    # prediction uses the EMA weights: the same as a forward pass of a network holding them
    x = data.views
    with torch.no_grad():
        tokens = method.encoder_((torch.as_tensor(x["id"]), torch.as_tensor(x["a"]), torch.as_tensor(x["b"])))
        expected = torch.sigmoid(tokens.mean(1) @ ema["head.fc.weight"].T + ema["head.fc.bias"]).numpy()
    np.testing.assert_allclose(method.predict_scores(data), expected, rtol=1e-5, atol=1e-6)


def _initial_state(method: DeepMethod, data: MultiLabelData) -> dict:
    """The weights a fit of ``method`` starts from (its seed, its model), before any step."""
    captured = {}

    class Capture(type(method)):
        def stages(self):
            captured.update({k: v.detach().clone() for k, v in self.model_.state_dict().items()})
            return super().stages()

    Capture(**method.get_params()).fit(data)
    return captured


# ----------------------------------------------------------------------------- 5. validation, schedules, monitor
def test_5_validation_gives_the_loss_and_every_metric_and_drives_the_schedule():
    class Plateau(Toy):
        def make_scheduler(self, optimizer, steps_per_epoch):
            return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0, min_lr=0.01)

    data = features()
    method = Plateau(inputs="features", epochs=8, lr=2.0, val_fraction=0.25).fit(data)
    history = method.history_
    assert {"val_loss", "val_bce", *(f"val_{m}" for m in METRICS)} <= set(history[0])
    # the lr sequence of a ReduceLROnPlateau fed the recorded validation losses by hand
    replica = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(replica, factor=0.5, patience=0, min_lr=0.01)
    expected = []
    for record in history:
        expected.append(replica.param_groups[0]["lr"])
        schedule.step(record["val_loss"])
    assert [h["lr"] for h in history] == pytest.approx(expected)
    assert len(set(expected)) > 1  # it did reduce: the check is not vacuous
    # the last epoch's val_loss is the mean BCE of the final weights on the validation part
    _, val = validation_split(data, 0.25, 0)
    scores, z = method.predict_scores(val), method.predict_outputs(val)["logits"].astype(np.float64)
    bce = np.mean(val.Y * np.logaddexp(0, -z) + (1 - val.Y) * np.logaddexp(0, z))   # -log σ(z), -log(1 - σ(z))
    assert history[-1]["val_loss"] == pytest.approx(bce, rel=1e-4)
    assert history[-1]["val_ranking_loss"] == pytest.approx(evaluate(val.Y, scores)["ranking_loss"], rel=1e-6)
    with pytest.raises(BenchError, match="stepped with 'val_loss', which needs validation data"):
        Plateau(inputs="features", epochs=2).fit(data)


@pytest.mark.parametrize("monitor, best", [("val_loss", min), ("val_one_error", min), ("val_mAP", max)])
def test_5_early_stopping_keeps_the_best_epoch_by_a_named_monitor_in_its_direction(monitor, best):
    method = Toy(inputs="features", epochs=10, lr=1.5, val_fraction=0.25, patience=2, monitor=monitor).fit(features())
    values = [h[monitor] for h in method.history_]
    assert method.best_epoch_ == 1 + values.index(best(values))
    assert len(values) == min(10, method.best_epoch_ + 2)
    with pytest.raises(BenchError, match="monitor must be one of val_loss, val_hamming_loss"):
        Toy(inputs="features", val_fraction=0.25, patience=2, monitor="val_map").fit(features())


# ----------------------------------------------------------------------------- 6. calibration
def test_6_calibration_runs_once_after_training_on_the_validation_part():
    class Calibrated(Toy):
        def calibrate(self, val):
            self.calls_ = getattr(self, "calls_", []) + [val]
            self.epochs_before_ = len(self.history_)
            if val is not None:   # a threshold chosen on the validation part (e.g. a stop threshold)
                scores = self.predict_scores(val)
                candidates = np.linspace(0.05, 0.95, 19)
                f1 = [evaluate(val.Y, scores, (scores >= c).astype(np.uint8))["micro_f1"] for c in candidates]
                self.threshold_ = float(candidates[int(np.argmax(f1))])
                self.scores_then_ = scores

    data = features()
    method = Calibrated(inputs="features", epochs=3, val_fraction=0.25).fit(data)
    (val,) = method.calls_
    _, expected_val = validation_split(data, 0.25, 0)
    np.testing.assert_array_equal(val.Y, expected_val.Y)
    assert method.epochs_before_ == 3                                   # after the last epoch
    np.testing.assert_array_equal(method.scores_then_, method.predict_scores(val))  # the final weights
    assert 0 < method.threshold_ < 1
    assert Calibrated(inputs="features", epochs=1).fit(data).calls_ == [None]


# ----------------------------------------------------------------------------- 7. indices and sampler
def test_7_batches_carry_the_indices_of_their_examples_features_and_images():
    for data, inputs in [(features(n=40), "features"), (images(n=24), "image")]:
        method = record_batches(Toy)(inputs=inputs, epochs=2, batch_size=5).fit(data)
        seen = np.concatenate([idx for idx, _ in method.batches_seen])
        assert sorted(seen.tolist()) == sorted(list(range(data.n_samples)) * 2)   # each example once per epoch
        for idx, y in method.batches_seen:
            np.testing.assert_array_equal(y, data.Y[idx])


def test_7_a_sampler_composes_the_batches_with_examples_from_outside_them():
    class WithPartners(record_batches(Toy)):
        """Each batch: 4 anchors and, after them, the example after each anchor (its "neighbour")."""

        def train_batch_indices(self, n, epoch):
            order = np.random.default_rng(epoch).permutation(n)
            return [np.r_[a, (a + 1) % n] for a in np.array_split(order, n // 4)]

    for data, inputs in [(features(n=40), "features"), (images(n=24), "image")]:
        method = WithPartners(inputs=inputs, epochs=1).fit(data)
        assert len(method.batches_seen) == data.n_samples // 4
        for idx, y in method.batches_seen:
            np.testing.assert_array_equal(idx[4:], (idx[:4] + 1) % data.n_samples)
            np.testing.assert_array_equal(y, data.Y[idx])


# ----------------------------------------------------------------------------- 8. multi-crop
def test_8_five_crop_draws_one_of_the_corner_and_centre_crops_then_crops_randomly():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    five = [c.numpy().tobytes() for c in TF.five_crop(TF.resize(img, [24, 24], antialias=True), [16, 16])]
    exact = train_transform(16, resize=24, flip=False, five_crop=16)     # final crop = the five-crop's side
    drawn = [exact(img).numpy().tobytes() for _ in range(60)]
    assert set(drawn) == set(five)                                        # each of the five, nothing else
    smaller = train_transform(12, resize=24, flip=False, five_crop=16)
    windows = {np.frombuffer(c, np.uint8).reshape(3, 16, 16)[:, i:i + 12, j:j + 12].tobytes()
               for c in five for i in range(5) for j in range(5)}
    assert {smaller(img).numpy().tobytes() for _ in range(40)} <= windows
    assert smaller.describe() == "resize=24,five_crop=16,crop=random12,flip=no"
    assert Toy(resize=24, five_crop=16, image_size=12).train_transform().describe() == smaller.describe().replace(
        "flip=no", "flip=yes")
    with pytest.raises(BenchError, match="five_crop 30 is larger than resize 24"):
        train_transform(12, resize=24, five_crop=30)


# ----------------------------------------------------------------------------- 9. cached frozen maps
def test_9_a_frozen_backbone_runs_once_per_image_across_epochs_and_folds(monkeypatch):
    calls = []
    forward = Backbone.forward
    monkeypatch.setattr(Backbone, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    data = images(n=40)
    folds = [(np.arange(0, 30), np.arange(30, 40)), (np.arange(10, 40), np.arange(0, 10))]
    kwargs = dict(inputs="image", freeze_backbone=True, cache_features=True, epochs=3, flip=False)
    scores = {}
    for k, (train, test) in enumerate(folds):
        method = Toy(**kwargs).fit(data.subset(train))
        scores[k] = method.predict_scores(data.subset(test))
    probes = 2   # building an encoder runs the backbone once on one blank image (its grid)
    assert sum(calls) == data.n_samples + probes   # every image once, for 2 folds x 3 epochs + prediction
    calls.clear()
    again = Toy(**kwargs).fit(data.subset(folds[0][0])).predict_scores(data.subset(folds[0][1]))
    assert sum(calls) == 1                          # a fresh fit finds every map on disk
    np.testing.assert_array_equal(again, scores[0])
    calls.clear()
    Toy(**kwargs, random_state=1).fit(data.subset(folds[0][0]))
    assert sum(calls) == 30 + 1                     # other (random) weights: other maps
    # the same training without the cache (the frozen backbone re-run every batch) agrees up to float16
    plain = Toy(**{**kwargs, "cache_features": False}).fit(data.subset(folds[0][0]))
    np.testing.assert_allclose(plain.predict_scores(data.subset(folds[0][1])), scores[0], rtol=1e-2, atol=1e-3)
    with pytest.raises(BenchError, match="cache_features needs a frozen backbone"):
        Toy(inputs="image", cache_features=True).fit(data)


# ----------------------------------------------------------------------------- 10. structured prediction
def test_10_predict_decodes_with_the_model_on_the_device():
    class TopOne(Toy):
        def decode(self, model, batch):
            logits = self.forward_eval(model, batch)["logits"]
            return F.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()

    data = features()
    method = TopOne(inputs="features", epochs=2, val_fraction=0.25).fit(data)
    scores, labels = method.predict_scores(data), method.predict(data)
    assert labels.dtype == np.uint8 and (labels.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(labels.argmax(axis=1), scores.argmax(axis=1))
    _, val = validation_split(data, 0.25, 0)   # validation scores the decoded label sets
    expected = evaluate(val.Y, method.predict_scores(val), method.predict(val))
    assert method.history_[-1]["val_subset_accuracy"] == pytest.approx(expected["subset_accuracy"])


# ----------------------------------------------------------------------------- 11. amp in the identity
def test_11_amp_is_a_hyper_parameter_and_part_of_the_job_identity():
    from bench import params as bench_params
    from bench import plugins
    from bench.protocols import make_splits

    der = plugins.get("methods", "der")
    bench_params.check_override_keys({"amp": False}, [der])       # `--set amp=false` is accepted
    params, applied = bench_params.resolve_params(der, {"amp": False})
    assert params["amp"] is False and applied == {"amp": False}
    data = features()
    split = make_splits(data, "kfold", 2, (0,))[0]
    on, off = (runner.Job("der", "d", {**params, "amp": amp}, {}, split, "f") for amp in (True, False))
    assert on.job_id != off.job_id and on.config["params"]["amp"] is True
