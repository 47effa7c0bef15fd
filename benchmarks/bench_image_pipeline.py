"""Training throughput of the shared image pipeline: real decode + augmentation vs synthetic tensors.

One run, one model (ResNet-101 at 448 px by default, bf16 autocast and channels_last on CUDA,
SGD, a linear head over max-pooled tokens: the DER baseline's compute), three measurements:

* ``loader``    the DataLoader alone: JPEG decoding, resize 512, random crop 448, flip in workers;
* ``synthetic`` training steps on uint8 batches already on the device (the upper bound);
* ``pipeline``  training steps fed by the loader (pinned memory, non-blocking copies).

The issue's target: ``pipeline`` within 10 % of ``synthetic`` (data loading is not the bottleneck).
The JPEG files are generated once into a temporary folder (500 x 375, VOC's typical size, smooth
content plus noise so they compress like photos). Without CUDA the defaults shrink to a smoke run
(ResNet-18 at 64 px, a few steps) that only checks the script works::

    python benchmarks/bench_image_pipeline.py                 # GPU: the real measurement
    python benchmarks/bench_image_pipeline.py --steps 5       # CPU: smoke check
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from bench.backbones import build_backbone
from bench.data import ImageView
from bench.deep import TokenNetwork
from bench.image import make_loader, train_transform
from bench.tokens import ImageTokenEncoder
from bench.training import autocast


class MaxPoolHead(nn.Module):
    def __init__(self, width: int, n_labels: int):
        super().__init__()
        self.fc = nn.Linear(width, n_labels)

    def forward(self, tokens):
        return {"logits": self.fc(tokens.max(dim=1).values)}


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        phase = rng.uniform(0, 6.28, 3)
        freq = rng.uniform(0.005, 0.05, 3)
        img = np.stack([127 + 100 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def build_model(args, device: torch.device, n_labels: int):
    backbone = build_backbone(args.backbone, args.pretrained)
    encoder = ImageTokenEncoder(backbone, (args.size, args.size))
    model = TokenNetwork(encoder, MaxPoolHead(encoder.width, n_labels)).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        encoder.channels_last = True
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def train_steps(model, optimizer, batches, n_steps: int, device: torch.device) -> float:
    """Images per second over ``n_steps`` training steps (after the caller's warm-up)."""
    model.train()
    seen = 0
    _sync(device)
    t0 = time.perf_counter()
    for images, y in itertools.islice(batches, n_steps):
        images, y = images.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss = F.binary_cross_entropy_with_logits(model(images)["logits"].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += images.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader):
    while True:
        yield from loader


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet101" if cuda else "resnet18")
    p.add_argument("--pretrained", default="false", help="weights do not change the speed; false avoids the download")
    p.add_argument("--size", type=int, default=448 if cuda else 64)
    p.add_argument("--resize", type=int, default=512 if cuda else 72)
    p.add_argument("--batch-size", type=int, default=64 if cuda else 8)
    p.add_argument("--steps", type=int, default=40 if cuda else 3)
    p.add_argument("--warmup", type=int, default=10 if cuda else 1)
    p.add_argument("--images", type=int, default=1024 if cuda else 32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    args = p.parse_args(argv)
    args.pretrained = {"false": False, "true": True}.get(args.pretrained.lower(), args.pretrained)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    n_labels = 20
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, (500, 375))
        view = ImageView(paths=tuple(paths))
        Y = (rng.random((len(paths), n_labels)) < 0.15).astype(np.uint8)
        loader = make_loader(view, Y, train_transform(args.size, args.resize), batch_size=args.batch_size,
                             shuffle=True, seed=0, num_workers=args.workers, pin_memory=cuda, drop_last=True)
        workers = loader.num_workers
        model, optimizer = build_model(args, device, n_labels)

        # The loader alone (decode + augment throughput of the workers).
        stream = forever(loader)
        for _ in itertools.islice(stream, args.warmup):
            pass
        t0 = time.perf_counter()
        n = sum(x.shape[0] for x, _ in itertools.islice(stream, args.steps))
        loader_rate = n / (time.perf_counter() - t0)

        synthetic = [(torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8,
                                    device=device),
                      torch.as_tensor(Y[: args.batch_size], dtype=torch.float32, device=device))] * 2
        train_steps(model, optimizer, itertools.cycle(synthetic), args.warmup, device)
        synthetic_rate = train_steps(model, optimizer, itertools.cycle(synthetic), args.steps, device)
        train_steps(model, optimizer, stream, args.warmup, device)
        pipeline_rate = train_steps(model, optimizer, stream, args.steps, device)

    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"# {args.backbone} at {args.size} px (train: resize {args.resize}, random crop, flip), "
          f"batch {args.batch_size}, {args.steps} timed steps, {workers} loader workers, {name}, "
          f"torch {torch.__version__}{', bf16 autocast, channels_last' if cuda else ''}")
    print(f"{'measurement':<12} {'images/s':>10} {'vs synthetic':>13}")
    for label, rate in (("loader", loader_rate), ("synthetic", synthetic_rate), ("pipeline", pipeline_rate)):
        print(f"{label:<12} {rate:>10.1f} {rate / synthetic_rate:>12.1%}")
    ok = pipeline_rate >= 0.9 * synthetic_rate
    print(f"target (pipeline >= 90% of synthetic): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
