"""The shared image pipeline: transforms, decoding, loaders, tokens, DeepMethod, derived features."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from bench import image, image_features, plugins, runner
from bench.backbones import build_backbone
from bench.data import ImageView, MultiLabelData
from bench.deep import DeepMethod
from bench.errors import BenchError
from bench.tokens import FeatureTokenEncoder, ImageTokenEncoder, build_token_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def macro_ap(y_true, scores):
    """scikit-learn's AP averaged over the labels that have a positive example."""
    from sklearn.metrics import average_precision_score

    keep = y_true.sum(axis=0) > 0
    return average_precision_score(y_true[:, keep], scores[:, keep], average="macro")


# ----------------------------------------------------------------------------- transforms, decoding
def test_train_transform_crops_a_window_of_the_resized_image():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    resized = image.ImageTransform(resize=16)(img)
    assert resized.shape == (3, 16, 16)
    crops = {image.train_transform(12, resize=16, flip=False)(img).numpy().tobytes() for _ in range(20)}
    windows = {resized[:, i:i + 12, j:j + 12].numpy().tobytes() for i in range(5) for j in range(5)}
    assert crops <= windows and len(crops) > 1  # random windows, every one a real window
    flips = [image.ImageTransform(flip=True)(img) for _ in range(20)]
    assert any(torch.equal(f, img) for f in flips) and any(torch.equal(f, img.flip(-1)) for f in flips)
    assert image.test_transform(12)(img).shape == (3, 12, 12)
    assert image.test_transform(None)(img) is img
    assert image.train_transform(448, 512).describe() == "resize=512,crop=random448,flip=yes"
    with pytest.raises(BenchError, match="crop 40 is larger than resize 32"):
        image.ImageTransform(resize=32, crop=40)


def test_decoding_round_trips_through_png_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(image.decode_file(tmp_path / "rgb.png").permute(1, 2, 0).numpy(), rgb)
    np.testing.assert_array_equal(image.decode_file(tmp_path / "gray.png").numpy(), np.stack([gray] * 3))
    np.testing.assert_array_equal(image.to_chw_rgb(gray).numpy(), np.stack([gray] * 3))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(BenchError, match=r"bad\.jpg cannot be decoded"):
        image.decode_file(tmp_path / "bad.jpg")
    with pytest.raises(BenchError, match=r"missing\.png does not exist"):
        image.decode_file(tmp_path / "missing.png")


def test_file_loader_with_workers_is_reproducible(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    view, Y = ImageView(paths=tuple(paths)), np.eye(6, 3, dtype=np.uint8)

    def epoch(seed):
        loader = image.make_loader(view, Y, image.train_transform(12, resize=16), batch_size=4,
                                   shuffle=True, seed=seed, num_workers=1)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = epoch(3), epoch(3)
    assert [x.shape for x, _ in a] == [(4, 3, 12, 12), (2, 3, 12, 12)]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_model_input_normalisation_by_hand():
    x = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    out = image.to_model_input(x, (0.5, 0.2, 0.0), (0.5, 0.1, 1.0), torch.device("cpu"))
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]], [[1.0, 0.0]]]])
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------- tokens
def test_image_tokens_are_the_feature_map_positions_in_row_major_order():
    encoder = ImageTokenEncoder(build_backbone("small-cnn", pretrained=False), (24, 32)).eval()
    images = torch.randint(0, 256, (2, 3, 24, 32), dtype=torch.uint8)
    with torch.no_grad():
        fmap = encoder.feature_map(images)
        tokens = encoder(images)
    assert encoder.grid == (6, 8) and encoder.n_tokens == 48 and encoder.width == 128
    h, w = encoder.grid
    for i in range(h):
        for j in range(w):
            torch.testing.assert_close(tokens[:, i * w + j], fmap[:, :, i, j])
    torch.testing.assert_close(encoder.tokens_to_map(tokens), fmap)
    projected = ImageTokenEncoder(build_backbone("small-cnn", pretrained=False), (24, 32), width=16)
    assert projected(images).shape == (2, 48, 16)
    assert len(projected.new_parameters()) == 2  # the 1x1 projection's weight and bias


def test_feature_tokens_standardise_each_view_then_embed_it():
    rng = np.random.default_rng(0)
    views = {"a": rng.normal(3, 2, (50, 4)).astype(np.float32), "b": rng.normal(size=(50, 7)).astype(np.float32)}
    encoder = FeatureTokenEncoder(views, width=5)
    x = (torch.as_tensor(views["a"][:3]), torch.as_tensor(views["b"][:3]))
    tokens = encoder(x)
    assert tokens.shape == (3, 2, 5) and encoder.grid == (1, 2)
    za = (views["a"][:3] - views["a"].mean(0)) / views["a"].std(0)
    expected = F.relu(encoder.embed[0](torch.as_tensor(za, dtype=torch.float32)))
    torch.testing.assert_close(tokens[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_token_encoder_chooses_the_view(mosaic):
    small = mosaic.subset(np.arange(20))
    assert build_token_encoder(small, "small-cnn", pretrained=False).grid == (14, 14)
    assert build_token_encoder(small, "small-cnn", inputs="features").grid == (1, 4)
    only_features = MultiLabelData("f", small.feature_views, small.Y, small.label_names)
    with pytest.raises(BenchError, match="has no image view"):
        build_token_encoder(only_features, "small-cnn", pretrained=False, inputs="image")


# ----------------------------------------------------------------------------- DeepMethod
class MaxPoolHead(nn.Module):
    def __init__(self, width: int, n_labels: int):
        super().__init__()
        self.fc = nn.Linear(width, n_labels)

    def forward(self, tokens):
        return {"logits": self.fc(tokens.max(dim=1).values)}


class ToyDeep(DeepMethod):
    """Test-only: max over tokens + a linear layer, BCE."""

    name = "toy-deep"

    def __init__(self, backbone="small-cnn", pretrained=False, epochs=2, batch_size=32, lr=0.05,
                 inputs="auto", resize=None, image_size=None, steps_per_epoch=None, val_fraction=0.0,
                 patience=None, device="cpu", random_state=0, verbose=False):
        self.backbone = backbone
        self.pretrained = pretrained
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.inputs = inputs
        self.resize = resize
        self.image_size = image_size
        self.steps_per_epoch = steps_per_epoch
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def build_head(self, encoder, n_labels):
        return MaxPoolHead(encoder.width, n_labels)

    def compute_loss(self, outputs, y):
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], y)
        return bce, {"bce": bce}


@pytest.fixture(scope="module")
def mosaic():
    plugins.load.cache_clear()
    return plugins.get("datasets", "mnist-mosaic")().load(None)


def test_deep_method_trains_on_mosaic_images(mosaic):
    train, test = mosaic.subset(np.arange(64)), mosaic.subset(np.arange(1900, 1924))
    kwargs = dict(epochs=2, batch_size=12, steps_per_epoch=2, resize=64, image_size=56, val_fraction=0.25)
    method = ToyDeep(**kwargs).fit(train)
    scores = method.predict_scores(test)
    assert scores.shape == (24, 10) and np.isfinite(scores).all() and (0 <= scores).all() and (scores <= 1).all()
    assert [h["epoch"] for h in method.history_] == [1, 2]
    assert {"loss", "bce", "lr", "val_loss", "val_bce", "val_mAP", "val_ranking_loss", "time_s"} <= set(method.history_[0])
    assert method.encoder_.grid == (14, 14)
    again = ToyDeep(**kwargs).fit(train).predict_scores(test)
    np.testing.assert_array_equal(scores, again)  # seeded: the same run twice gives the same numbers
    other = ToyDeep(**kwargs, random_state=1).fit(train).predict_scores(test)
    assert not np.array_equal(scores, other)
    assert method.predict(test).dtype == np.uint8


def test_deep_method_learns_from_feature_tokens(mosaic):
    train, test = mosaic.subset(np.arange(800)), mosaic.subset(np.arange(1700, 2000))
    method = ToyDeep(inputs="features", epochs=6, lr=0.1, val_fraction=0.1, patience=3).fit(train)
    assert method.inputs_ == "features" and method.encoder_.grid == (1, 4)
    ap = macro_ap(test.Y, method.predict_scores(test))
    chance = test.Y.mean()  # the AP of uninformative scores is about the positive rate (~0.23)
    assert ap > chance + 0.25, (ap, chance)
    best = max(h["val_mAP"] for h in method.history_)
    assert best == pytest.approx(macro_ap(*_val_part(train, method)), abs=1e-6)  # the best epoch's weights


class ToyDeepWithSchedule(ToyDeep):
    def make_scheduler(self, optimizer, steps_per_epoch):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    def epoch_callbacks(self):
        self.seen = []
        return [self.seen.append]


def test_schedule_and_epoch_callbacks(mosaic):
    method = ToyDeepWithSchedule(inputs="features", epochs=3, lr=0.1).fit(mosaic.subset(np.arange(64)))
    assert [h["lr"] for h in method.history_] == pytest.approx([0.1, 0.05, 0.025])
    assert method.seen == method.history_ and "val_mAP" not in method.history_[0]


def _val_part(train, method):
    from bench.protocols import validation_split

    _, val = validation_split(train, 0.1, 0)
    return val.Y, method.predict_scores(val)


def test_deep_method_rejects_bad_settings(mosaic):
    small = mosaic.subset(np.arange(40))
    with pytest.raises(BenchError, match="epochs must be a positive integer"):
        ToyDeep(epochs=0).fit(small)
    with pytest.raises(BenchError, match="patience.*val_fraction"):
        ToyDeep(patience=2, inputs="features").fit(small)
    with pytest.raises(BenchError, match="before fit"):
        ToyDeep().predict_scores(small)


def test_deep_method_never_trains_from_scratch_silently(mosaic, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(BenchError, match="resnet18.*--set pretrained=false"):
        ToyDeep(backbone="resnet18", pretrained=True).fit(mosaic.subset(np.arange(20)))


# ----------------------------------------------------------------------------- derived features
IMAGE_ONLY_DATASET = '''
import numpy as np
from bench.api import Dataset
from bench.data import ImageView, MultiLabelData


class ImageOnly(Dataset):
    name = "image-only"
    embedded = True

    def load(self, data_root):
        rng = np.random.default_rng(0)
        Y = np.zeros((60, 2), dtype=np.uint8)
        Y[:30, 0] = 1
        Y[::2, 1] = 1
        images = rng.integers(0, 60, (60, 32, 32, 3)).astype(np.uint8)
        images[Y[:, 0] == 1, :16] += 150  # label 0: a bright upper half
        images[Y[:, 1] == 1, :, :16, 0] += 150  # label 1: a red left half
        return MultiLabelData("image-only", {"image": ImageView(array=images)}, Y, ("top", "left"))
'''


def test_feature_only_methods_run_on_image_datasets_with_cached_stage_features(isolated, tmp_path, monkeypatch):
    (isolated / "datasets" / "image_only.py").write_text(textwrap.dedent(IMAGE_ONLY_DATASET))
    plugins.load.cache_clear()
    store = tmp_path / "results"
    jobs = runner.build_jobs(["br"], ["image-only"], protocol="kfold", n_folds=2, seeds=(0,), overrides={},
                             data_root=tmp_path, store_root=store, feature_extractor="efficientnet-lite0@64")
    assert jobs[0].data_fingerprint.endswith("+efficientnet-lite0@64")
    extractions = []
    real_extract = image_features._extract
    monkeypatch.setattr(image_features, "_extract", lambda *a, **k: extractions.append(1) or real_extract(*a, **k))
    summary = runner.run_jobs(jobs, device="cpu", progress=False)
    assert not summary.failures, summary.failures
    assert min(r["metrics"]["mAP"] for r in summary.records) > 0.9  # both cues are easy to see
    cached = list((store / image_features.CACHE_SUBDIR).glob("*.npz"))
    assert len(cached) == 1
    assert len(extractions) == 1  # once for both folds, by the orchestrator

    # A damaged cache file is extracted anew, never trusted; a sound one is reused.
    cached[0].write_bytes(b"not a zip")
    assert not runner.run_jobs(jobs, device="cpu", progress=False, force=True).failures
    assert len(extractions) == 2
    assert not runner.run_jobs(jobs, device="cpu", progress=False, force=True).failures
    assert len(extractions) == 2

    data = runner.load_dataset("image-only", str(tmp_path))
    views = image_features.stage_features(data, image_size=64, cache_dir=cached[0].parent)
    assert list(views) == [f"efficientnet-lite0/stage{k}" for k in range(1, 6)]
    assert [v.shape[1] for v in views.values()] == [16, 24, 40, 112, 1280]
    # The cache holds what a fresh extraction computes; other pixels give another key.
    fresh = image_features.stage_features(data, image_size=64, cache_dir=None)
    for name in views:
        np.testing.assert_allclose(views[name], fresh[name], rtol=1e-5, atol=1e-6)
    brighter = data.views["image"].array.copy()
    brighter[0] += 1
    changed = MultiLabelData(data.name, {"image": ImageView(array=brighter)}, data.Y, data.label_names)
    transform = image.test_transform(64)
    assert image_features.cache_key(changed, "b", "w", transform) != image_features.cache_key(data, "b", "w", transform)


def test_a_truncated_jpeg_read_in_a_worker_is_one_line_naming_the_file(tmp_path):
    """torch re-raises a worker's error with its whole traceback as the message ("Caught BenchError
    in DataLoader worker process 1. ..."); the loader (of training and of the feature extractor
    alike: both are make_loader's) gives the worker's own line back, here from the second worker."""
    rng = np.random.default_rng(2)
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    whole = paths[5].read_bytes()
    paths[5].write_bytes(whole[:len(whole) // 2])
    view, Y = ImageView(paths=tuple(paths)), np.eye(6, 3, dtype=np.uint8)
    loader = image.make_loader(view, Y, image.test_transform(16), batch_size=3, num_workers=2)
    with pytest.raises(BenchError) as excinfo:
        list(loader)  # the second batch, images 3-5: worker 1
    message = str(excinfo.value)
    assert message.startswith(f"image file {paths[5]} cannot be decoded") and "\n" not in message, message


def test_worker_message_keeps_other_messages_as_they_are():
    assert image.worker_message("image file a.jpg does not exist") == "image file a.jpg does not exist"
    wrapped = ("Caught BenchError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise BenchError(msg)\n'
               "bench.errors.BenchError: image file b.jpg cannot be decoded (x)\n")
    assert image.worker_message(wrapped) == "image file b.jpg cannot be decoded (x)"
