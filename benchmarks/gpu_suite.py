"""Every GPU measurement in one call: one table of (figure, value, unit, target, ratio).

A lent GPU gives 15 minutes in all, starts included, so this runs in one command (planned for under
8 minutes on an H100/H200) and prints one table. Sections:

* ``image``: training throughput of ResNet-101 at 448 px (bf16 autocast, channels_last): synthetic
  uint8 batches already on the device, the same with ``torch.compile``, and fed by the real
  pipeline (JPEG decode + resize 512 + random crop 448 + flip in DataLoader workers); target: the
  real pipeline >= 0.9x synthetic (``benchmarks/bench_image_pipeline.py`` has the pieces).
* ``extract``: frozen feature extraction at 448 px, decode included: JPEG decoded in DataLoader
  workers, and decoded on the GPU (``torchvision.io.decode_jpeg`` on the device); target >= 2,000
  images/s.
* ``rmlc``: RMLC at MSRA's size (15,000 x [256, 225, 64, 144, 75, 128, 7], 50 labels;
  ``benchmarks/bench_rmlc.py``), fixed epochs: the folds one after another, stacked
  (:mod:`bench.stacked`), stacked + CUDA graph; each timed over a few epochs and extrapolated to
  10 folds x 30 epochs (the extrapolation is labelled as such); target < 120 s.
* ``concurrent``: k = 10 small jobs (RMLC folds on yeast) through the runner, one after another vs
  ten workers sharing the GPU (declared ``gpu_memory_mb``); target >= 5x.
* ``cmsg``, ``retdm``, ``order_free_rnn``: the ``measure(device, quick)`` of
  ``benchmarks/bench_<method>.py``, where that file exists.

``--quick`` shrinks every section to a dry run of a few seconds (CPU): it checks the script, not
the figures. ``--only image,rmlc`` runs some sections. Run from the checkout::

    python benchmarks/gpu_suite.py                     # on the GPU: the figures
    python benchmarks/gpu_suite.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

#: The method branches' benchmark modules whose ``measure(device, quick)`` joins the table.
EXTERNAL = ("cmsg", "retdm", "order_free_rnn")


def row(figure: str, value: float, unit: str, target: str | None = None) -> dict:
    return {"figure": figure, "value": float(value), "unit": unit, "target": target}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- image training
def measure_image(device: str, quick: bool) -> list[dict]:
    import bench_image_pipeline as pipe

    from bench.data import ImageView
    from bench.image import make_loader, train_transform

    dev = torch.device(device)
    size, resize, batch, steps, warmup, n_images = (32, 36, 2, 1, 1, 8) if quick else (448, 512, 64, 30, 8, 768)
    args = argparse.Namespace(backbone="resnet18" if quick else "resnet101", pretrained=False, size=size)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = pipe.write_jpegs(Path(tmp), n_images, (500, 375))
        Y = (rng.random((len(paths), 20)) < 0.15).astype(np.uint8)
        loader = make_loader(ImageView(paths=tuple(paths)), Y, train_transform(size, resize), batch_size=batch,
                             shuffle=True, seed=0, num_workers=0 if quick else None, pin_memory=dev.type == "cuda",
                             drop_last=True)
        model, optimizer = pipe.build_model(args, dev, 20)
        synthetic = [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev),
                      torch.as_tensor(Y[:batch], dtype=torch.float32, device=dev))] * 2
        pipe.train_steps(model, optimizer, itertools.cycle(synthetic), warmup, dev)
        synthetic_rate = pipe.train_steps(model, optimizer, itertools.cycle(synthetic), steps, dev)
        stream = pipe.forever(loader)
        pipe.train_steps(model, optimizer, stream, warmup, dev)
        pipeline_rate = pipe.train_steps(model, optimizer, stream, steps, dev)
        rows = [row(f"{args.backbone} {size}px training, synthetic tensors", synthetic_rate, "images/s"),
                row(f"{args.backbone} {size}px training, JPEG decode + augment", pipeline_rate, "images/s"),
                row("decode + augment vs synthetic", pipeline_rate / synthetic_rate, "x", ">= 0.9")]
        if not quick:  # compiling ResNet-101 takes a minute; a dry run leaves it out
            compiled = torch.compile(model)
            pipe.train_steps(compiled, optimizer, itertools.cycle(synthetic), warmup, dev)
            compiled_rate = pipe.train_steps(compiled, optimizer, itertools.cycle(synthetic), steps, dev)
            rows += [row(f"{args.backbone} {size}px training, synthetic, torch.compile", compiled_rate, "images/s"),
                     row("torch.compile vs eager (synthetic)", compiled_rate / synthetic_rate, "x")]
    return rows


# --------------------------------------------------------------------------- frozen extraction
def measure_extract(device: str, quick: bool) -> list[dict]:
    import bench_image_pipeline as pipe
    import torchvision
    from torch.nn import functional as F

    from bench.backbones import build_backbone
    from bench.data import ImageView
    from bench.image import make_loader, test_transform

    dev = torch.device(device)
    size, batch, n_images = (32, 2, 8) if quick else (448, 128, 1536)
    backbone = build_backbone("resnet18" if quick else "resnet101", False).to(dev).eval()
    if dev.type == "cuda":
        backbone.to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255

    def forward(images_uint8):
        x = (images_uint8.to(dev, non_blocking=True).float() - mean) / std
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            return backbone(x)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = pipe.write_jpegs(Path(tmp), n_images, (500, 375))
        loader = make_loader(ImageView(paths=tuple(paths)), np.zeros((n_images, 1), np.uint8), test_transform(size),
                             batch_size=batch, shuffle=False, seed=0, num_workers=0 if quick else None,
                             pin_memory=dev.type == "cuda")
        for images, _ in itertools.islice(loader, 1):  # warm-up
            forward(images)
        _sync(dev)
        t0, seen = time.perf_counter(), 0
        for images, _ in loader:
            forward(images)
            seen += len(images)
        _sync(dev)
        rows.append(row(f"frozen extraction {size}px, decode in workers", seen / (time.perf_counter() - t0),
                        "images/s", ">= 2000"))
        if dev.type == "cuda":  # nvJPEG on the device: the files' bytes are all the CPU reads
            data = [torchvision.io.read_file(str(p)) for p in paths]
            chunks = [data[i:i + batch] for i in range(0, len(data), batch)]

            def gpu_batch(chunk):
                decoded = torchvision.io.decode_jpeg(chunk, device=dev)
                return torch.stack([F.interpolate(img[None].float(), size=(size, size), mode="bilinear",
                                                  antialias=True)[0] for img in decoded])

            forward(gpu_batch(chunks[0]))
            _sync(dev)
            t0 = time.perf_counter()
            for chunk in chunks:
                forward(gpu_batch(chunk))
            _sync(dev)
            rows.append(row(f"frozen extraction {size}px, decode_jpeg on the GPU",
                            n_images / (time.perf_counter() - t0), "images/s", ">= 2000"))
    return rows


# --------------------------------------------------------------------------- RMLC, stacked folds
def measure_rmlc(device: str, quick: bool) -> list[dict]:
    import bench_rmlc

    from bench import plugins
    from bench.protocols import make_splits
    from bench.stacked import fit_folds

    if quick:  # a small stand-in of the same shape: 3 modalities, few examples
        bench_rmlc.DIMS, bench_rmlc.N_EXAMPLES, bench_rmlc.N_LABELS = [8, 6, 4], 400, 5
    data = bench_rmlc.msra_sized()
    folds, epochs, hidden = (3, 1, 16) if quick else (10, 2, 256)
    splits = make_splits(data, "kfold", n_folds=10, seeds=(0,))[:folds]
    trains = [data.subset(s.train) for s in splits]
    RMLC = plugins.get("methods", "rmlc")
    kw = dict(hidden=hidden, epochs=epochs, patience=None, val_fraction=0.0, device=device)
    dev = torch.device(device)

    def timed(fn) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    RMLC(**kw).fit(trains[0])  # warm-up (CUDA context, kernels)
    sequential = timed(lambda: RMLC(**kw).fit(trains[0]))  # one fold; folds are alike
    stacked = timed(lambda: fit_folds([RMLC(**kw) for _ in trains], trains))
    per_fold_epoch = {"sequential": sequential / epochs, "stacked": stacked / (epochs * folds)}
    if dev.type == "cuda":
        graphed = timed(lambda: fit_folds([RMLC(**kw) for _ in trains], trains, cuda_graph=True))
        per_fold_epoch["stacked + CUDA graph"] = graphed / (epochs * folds)
    size = "a small stand-in (--quick)" if quick else "MSRA's size"
    rows = []
    for name, s in per_fold_epoch.items():
        rows.append(row(f"RMLC {name} at {size}: fold-epochs/s", 1 / s, "fold-epochs/s"))
    for name, s in per_fold_epoch.items():
        basis = "1 fold" if name == "sequential" else f"{folds} folds"
        rows.append(row(f"RMLC {name}: 10 folds x 30 epochs (extrapolated from {basis} x {epochs} epoch(s))",
                        s * 300, "s", "< 120"))
    if dev.type != "cuda":
        rows.append(row("RMLC stacked + CUDA graph: not measured (CUDA graphs need CUDA)", float("nan"), ""))
    return rows


# --------------------------------------------------------------------------- concurrent small jobs
def measure_concurrent(device: str, quick: bool) -> list[dict]:
    from bench.runner import build_jobs, parse_overrides, run_jobs

    k, epochs, hidden = (2, 1, 8) if quick else (10, 20, 64)
    settings = [f"epochs={epochs}", "patience=None", "val_fraction=0", f"hidden={hidden}"]
    with tempfile.TemporaryDirectory() as tmp:
        def run(store: str, n_jobs: int) -> float:
            jobs = build_jobs(["rmlc"], ["yeast"], protocol="kfold", n_folds=k, seeds=None,
                              overrides=parse_overrides(settings), data_root=Path(tmp) / "data",
                              store_root=Path(tmp) / store)
            t0 = time.perf_counter()
            summary = run_jobs(jobs, device=device, n_jobs=n_jobs, progress=False, stack_folds="off")
            if summary.failures:
                raise RuntimeError(summary.failures[0]["error"])
            return time.perf_counter() - t0

        one_by_one = run("sequential", 1)
        together = run("concurrent", k)
    return [row(f"{k} small jobs (RMLC on yeast, {epochs} epochs) one after another", one_by_one, "s"),
            row(f"{k} small jobs, {k} workers sharing one device", together, "s"),
            row(f"{k} concurrent vs one after another", one_by_one / together, "x", ">= 5")]


# --------------------------------------------------------------------------- the table
def external_section(name: str):
    """``measure`` of benchmarks/bench_<name>.py, or None when the file does not exist."""
    path = HERE / f"bench_{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure


SECTIONS = {"image": measure_image, "extract": measure_extract, "rmlc": measure_rmlc,
            "concurrent": measure_concurrent}

TARGET = re.compile(r"^\s*(>=|<=|>|<|≥|≤)\s*([0-9][0-9,._]*(?:e-?\d+)?)")


def ratio(value: float, target: str | None) -> float:
    """How far a value is from its target, as a factor (>= 1: met): value / bound for ">= bound",
    bound / value for "< bound"; NaN without a numeric target."""
    m = TARGET.match(target or "")
    if not m or not math.isfinite(value) or value == 0:
        return float("nan")
    bound = float(m.group(2).replace(",", "").replace("_", ""))
    return value / bound if m.group(1) in (">=", ">", "≥") else bound / value


def run_sections(names: list[str], device: str, quick: bool) -> list[dict]:
    rows = []
    for name in names:
        measure = SECTIONS.get(name) or external_section(name)
        if measure is None:
            rows.append({**row(f"{name}: benchmarks/bench_{name}.py not present", float("nan"), ""), "section": name})
            continue
        t0 = time.perf_counter()
        try:
            got = measure(device, quick)
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc(file=sys.stderr)
            got = [row(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}",
                       float("nan"), "")]
        rows += [{**r, "section": name} for r in got]
        rows.append({**row(f"{name}: section time", time.perf_counter() - t0, "s"), "section": name})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"| {'section':<14} | {'figure':<78} | {'value':>10} | {'unit':<13} | {'target':<8} | {'ratio':>6} |",
             f"|{'-' * 16}|{'-' * 80}|{'-' * 12}|{'-' * 15}|{'-' * 10}|{'-' * 8}|"]
    for r in rows:
        value = "n/a" if not math.isfinite(r["value"]) else f"{r['value']:.4g}"
        q = ratio(r["value"], r.get("target"))
        lines.append(f"| {r.get('section', ''):<14} | {r['figure'][:78]:<78} | {value:>10} | {r['unit']:<13} | "
                     f"{r.get('target') or '':<8} | {'' if math.isnan(q) else f'{q:.2f}':>6} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run that checks the script (CPU)")
    p.add_argument("--only", default=None, help=f"comma-separated sections (default: all: "
                                                f"{','.join([*SECTIONS, *EXTERNAL])})")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else [*SECTIONS, *EXTERNAL]
    unknown = [n for n in names if n not in SECTIONS and n not in EXTERNAL]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join([*SECTIONS, *EXTERNAL])}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device (use --quick --device cpu for a dry run)")
    os.environ.setdefault("BENCH_MLFLOW", "0")
    t0 = time.perf_counter()
    rows = run_sections(names, args.device, args.quick)
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores, load " \
        f"{os.getloadavg()[0]:.1f})"
    print(f"# GPU suite on {where}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
          f"{' (--quick: a dry run, not the figures)' if args.quick else ''}")
    print(format_table(rows))
    print(f"total: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
