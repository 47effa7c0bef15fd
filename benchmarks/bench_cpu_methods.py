"""What each method costs per fold on the CPU, against a plain PyTorch loop of the same model.

Run from the checkout: ``python benchmarks/bench_cpu_methods.py [--methods der,cmsg,...] [--threads 2]``.

For each method, fold 1 of the default 10-fold protocol on ``mnist-mosaic`` (1,800 training
images), with the defaults and the dataset's scale settings, exactly as ``bench run`` builds the job:

* **fit s**, **predict s**: the job as :func:`bench.worker.execute` runs it (an in-fold search
  included: RETDM fits one model per α candidate), its record's timings;
* **img/s**: training examples the loop consumed (the history's epochs x the training part, every
  candidate of a search) per second of fit;
* **plain img/s**: the mean of two runs, one before and one after the job (both shown: on a
  shared machine the load may change meanwhile), of a plain PyTorch loop over the same network and
  loss on the same training part: the method's network (built as its ``fit`` builds it,
  untrained) trained for ``--plain-epochs`` epochs from in-memory tensors with SGD at the method's
  learning rate and batch size: shuffled index batches, forward (:meth:`forward_train`), the
  method's own loss (:meth:`compute_loss`), backward, step; no
  DataLoader, augmentation, validation, callbacks or history. Only for methods trained by the
  default one-stage loop (:meth:`DeepMethod.training_loss`): RETDM's three stages and neighbour
  batches, RMLC's per-modality updates and the Order-Free RNN's map stage + RNN have no single
  "same loop" to compare with (shown as ``-``);
* the same plain loop in NCHW (the layout the harness trained in on the CPU before it switched to
  NHWC) and in NHWC under bf16 autocast (not used by the harness on the CPU: see docs/speed.md);
* **GFLOP/img** (forward + backward of one training batch, ``torch.utils.flop_counter``, divided by
  the batch) and **GFLOP/s** achieved by the harness and by the plain loop; **ratio** = harness
  img/s / plain img/s (the target is >= 0.8: the harness may cost at most a fifth over the model).

Every figure is printed with the machine, the thread limit and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = "br,rmlc,der,cmsg,retdm,order_free_rnn"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fold_job(method: str, n_folds: int, store: Path):
    """Fold 1 of ``n_folds`` of ``method`` on mnist-mosaic, as ``bench run`` builds it."""
    from bench.jobs import build_jobs

    jobs = build_jobs([method], ["mnist-mosaic"], protocol=None, n_folds=n_folds, seeds=None, overrides={},
                      data_root=ROOT / "data", store_root=store)
    return next(j for j in jobs if j.split.fold in (0, 1))


def untrained_method(job):
    """The job's method with its network built on the training part, untrained (the first candidate
    of a search stands for the network's cost), and that training part."""
    from bench import plugins

    data = plugins.load_dataset(job.dataset, job.data_root)
    train = data.subset(job.split.train)
    params = dict(job.params)
    for key, values in job.search.get("grid", {}).items():
        params[key] = values[0]
    method = plugins.get("methods", job.method)(**params)
    if hasattr(method, "prepare_fit"):
        method.prepare_fit(train)
    return method, train


def uses_default_loop(method) -> bool:
    from bench.deep import DeepMethod

    return (isinstance(method, DeepMethod) and type(method).stages is DeepMethod.stages
            and getattr(method, "inputs_", None) == "image")


#: The plain loop's variants: the memory format of images and weights, and bf16 autocast.
PLAIN_VARIANTS = {"NHWC": ("channels_last", False), "NCHW": ("contiguous_format", False), "NHWC+bf16": ("channels_last", True)}


def plain_loop(method, train, epochs: int, variant: str = "NHWC") -> tuple[float, float]:
    """(images/s, GFLOP per image) of a plain loop of the method's network on the training part,
    in one of :data:`PLAIN_VARIANTS` (the harness trains NHWC in float32 on the CPU)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.image import to_chw_rgb
    from bench.training import Batch, full_precision

    layout, bf16 = PLAIN_VARIANTS[variant]
    model = method.model_
    model.to(memory_format=getattr(torch, layout))
    method.encoder_.channels_last = layout == "channels_last"  # the input's layout follows
    model.train()
    images = torch.stack([to_chw_rgb(a) for a in train.image_view.array])
    y = torch.as_tensor(train.Y, dtype=torch.float32)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=method.lr, momentum=0.9)
    bs = int(method.batch_size)

    def step(idx):
        batch = Batch(images[idx], y[idx], idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = method.forward_train(model, batch)
        total, _ = method.compute_loss(full_precision(outputs), batch.y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    probe = torch.arange(bs)
    with FlopCounterMode(display=False) as counter:
        step(probe)
    gflop_per_image = counter.get_total_flops() / bs / 1e9
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(bs):
            step(idx)
    return epochs * len(y) / (time.perf_counter() - t0), gflop_per_image


def measure(method_name: str, threads: int, plain_epochs: int, store: Path) -> dict:
    from bench.backends.devices import thread_limits
    from bench.worker import execute

    job = fold_job(method_name, 10, store)
    row = {"method": method_name}
    with thread_limits(threads):
        method, train = untrained_method(job)
        plain = uses_default_loop(method)
        # the plain loop before and after the job, so that a load that changes meanwhile (a shared
        # machine) moves both sides of the ratio alike
        before = {v: plain_loop(method, train, plain_epochs, v) for v in PLAIN_VARIANTS} if plain else {}
        record, _ = execute(job, "cpu")  # the worker's own path: fit (its search included), predict, readouts
        after = {v: plain_loop(method, train, plain_epochs, v) for v in PLAIN_VARIANTS} if plain else {}
        row["fit_s"], row["mAP"] = record["timings"]["fit_s"], record["metrics"]["mAP"]
        row["predict_s"] = record["timings"].get("predict_s", float("nan"))
        search = record.get("search") or {}
        row["candidates"] = len(search.get("candidates", [])) or 1
        n_fit = search.get("n_fit", len(job.split.train))  # a search fits on the part less its carve-out
        row["epochs"] = len(record.get("history") or [])
        seen = row["epochs"] * n_fit * row["candidates"]  # examples the loop consumed, every candidate's fit
        row["img_s"] = seen / row["fit_s"] if seen else float("nan")
        for variant in PLAIN_VARIANTS:
            row[variant] = (before[variant][0] + after[variant][0]) / 2 if plain else float("nan")
        row["gflop_img"] = before["NHWC"][1] if plain else float("nan")
        row["plain_img_s"] = row["NHWC"]
        row["plain_spread"] = (f"{before['NHWC'][0]:.0f}/{after['NHWC'][0]:.0f}" if plain else "-")
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain-epochs", type=int, default=2)
    parser.add_argument("--store", default="/tmp/bench-cpu-methods")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; threads per job: {args.threads}; "
          f"mnist-mosaic, fold 1 of 10, defaults + scale settings, CPU; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    header = ("method", "fit s", "predict s", "epochs", "cands", "img/s", "plain img/s", "ratio", "GFLOP/img",
              "GFLOP/s", "plain GFLOP/s", "plain NCHW img/s", "plain NHWC+bf16 img/s", "plain before/after img/s",
              "mAP", "load before/after")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.methods.split(","):
        before = os.getloadavg()[0]
        r = measure(name, args.threads, args.plain_epochs, Path(args.store))
        after = os.getloadavg()[0]
        ratio = r["img_s"] / r["plain_img_s"]
        cells = (name, f"{r['fit_s']:.1f}", f"{r['predict_s']:.1f}", r["epochs"], r["candidates"], _f(r['img_s'], '.0f'),
                 _f(r["plain_img_s"], ".0f"), _f(ratio, ".2f"), _f(r["gflop_img"], ".3f"),
                 _f(r["img_s"] * r["gflop_img"], ".1f"), _f(r["plain_img_s"] * r["gflop_img"], ".1f"),
                 _f(r["NCHW"], ".0f"), _f(r["NHWC+bf16"], ".0f"), r["plain_spread"],
                 f"{r['mAP']:.3f}", f"{before:.1f}/{after:.1f}")
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def _f(value: float, spec: str) -> str:
    return "-" if not np.isfinite(value) else format(value, spec)


if __name__ == "__main__":
    main()
