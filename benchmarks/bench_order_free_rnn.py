"""Time Order-Free RNN's training steps and beam-search decoding at the paper's size.

Paper size (Chen et al., AAAI 2018): ResNet-152 maps of 2048 x 14 x 14 (448 px inputs: 196 regions)
and 81 labels (NUS-WIDE); LSTM, attention and f_pred widths 512 (the method's defaults), batches of
32, T = 10 time steps (the real T is a dataset's largest label count in training; 10 stands in for
it), beam 3. The maps are synthetic (Gaussian, post-ReLU like a ResNet's), which is all timing
needs: the frozen CNN runs once per image through the feature cache, so training and decoding
read cached maps and the CNN's own cost is not part of these figures.

* training: the RNN stage's update (``methods.order_free_rnn.unroll`` over T steps, Eq. 8, backward,
  Adam), batches already on the device, bf16 autocast on CUDA as the method runs it;
* decoding: ``beam_search`` over batches of 64 images to the full T (no stop threshold: the worst
  case), images per second, and the time one prediction of a batch takes *before* (the attention
  keys W_v v_i computed for each of the beam's copies of an image, and three searches: one each for
  ``predict``, ``predict_scores`` and ``class_maps``) and *after* (the keys once per image, one
  search shared by the three), alternating batch by batch on the same batches, each figure the
  fastest batch (the least disturbed by other load on a shared machine); and the keys alone;
* peak memory: CUDA's peak allocated bytes over both; on the CPU the process's peak resident set.

Run from the checkout::

    python benchmarks/bench_order_free_rnn.py --quick             # tiny sizes, CPU, seconds
    python benchmarks/bench_order_free_rnn.py --device cuda       # the paper's size
    python benchmarks/bench_order_free_rnn.py --device cpu --batches 2   # the paper's size, fewer batches

``measure(device, quick)`` returns the rows for ``benchmarks/gpu_suite.py``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time

import torch

from bench import plugins
from bench.training import autocast


def _method_module():
    """methods/order_free_rnn.py, imported by the plug-in loader (under its private name)."""
    return sys.modules[plugins.get("methods", "order_free_rnn").__module__]

PAPER = {"channels": 2048, "grid": 14, "labels": 81, "hidden": 512, "batch": 32, "steps": 10, "beam": 3,
         "eval_batch": 64, "train_iters": 30, "decode_batches": 10}
QUICK = {"channels": 64, "grid": 7, "labels": 10, "hidden": 32, "batch": 8, "steps": 4, "beam": 3,
         "eval_batch": 16, "train_iters": 5, "decode_batches": 3}


def synthetic_batch(size: dict, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Regions [n, h*w, C] (non-negative like a ResNet's output) and labels with ~3 positives."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    regions = torch.randn(n, size["grid"] ** 2, size["channels"], generator=g).relu()
    y = (torch.rand(n, size["labels"], generator=g) < 3 / size["labels"]).float()
    return regions.to(device), y.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(head, size: dict, device: torch.device) -> float:
    """RNN-stage updates per second (Algorithm 1's second phase, ``updates="sequence"``)."""
    ofr = _method_module()
    optimizer = torch.optim.Adam(head.rnn_parameters(), lr=3e-4)
    batches = [synthetic_batch(size, size["batch"], device, seed) for seed in range(4)]
    head.train()

    def update(regions, y):
        with autocast(device):
            outputs = ofr.unroll(head, regions, size["steps"])
        loss = ofr.step_bce(outputs["step_logits"].float(), y.unsqueeze(1).expand(-1, size["steps"], -1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for regions, y in batches[:2]:   # warm-up (kernels, allocator)
        update(regions, y)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(size["train_iters"]):
        update(*batches[i % len(batches)])
    _sync(device)
    return size["train_iters"] / (time.perf_counter() - t0)


@torch.no_grad()
def time_decoding(head, size: dict, device: torch.device) -> dict[str, float]:
    """Seconds per batch (the fastest of ``decode_batches`` batches: the least disturbed by other
    load) of one prediction, beam 3 to the full T, *after*: one search with the attention keys
    W_v v_i per image, and *before*: as the method did (the keys computed for each of the K beam
    copies of an image: the same values at K times the work; three searches per prediction, one
    each for ``predict``, ``predict_scores`` and ``class_maps``). The two alternate batch by batch,
    so both see the same load. Also the keys alone, per beam copy and per image."""
    beam_search = _method_module().beam_search
    head.eval()
    K = size["beam"]
    per_image = head.keys

    def per_beam(regions):   # W_v v_i over the B x K copies (what beam_search did), one row per image back
        return head.attention.keys(regions.repeat_interleave(K, dim=0))[::K]

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            fn()
        _sync(device)
        return time.perf_counter() - t0

    batches = [synthetic_batch(size, size["eval_batch"], device, 100 + s)[0] for s in range(2)]
    with autocast(device):
        beam_search(head, batches[0], K, size["steps"])          # warm-up
    times: dict[str, list[float]] = {"after": [], "before": [], "keys_per_image": [], "keys_per_beam": []}
    try:
        for i in range(size["decode_batches"]):
            x = batches[i % 2]
            head.keys = per_image
            times["after"].append(timed(lambda x=x: beam_search(head, x, K, size["steps"])))
            head.keys = per_beam
            times["before"].append(timed(lambda x=x: [beam_search(head, x, K, size["steps"]) for _ in range(3)]))
            times["keys_per_image"].append(timed(lambda x=x: head.attention.keys(x)))
            times["keys_per_beam"].append(timed(lambda x=x: per_beam(x)))
    finally:
        head.__dict__.pop("keys", None)
    return {k: min(v) for k, v in times.items()}


def measure(device: str, quick: bool, batches: int | None = None) -> list[dict]:
    """The rows {figure, value, unit, target} at tiny (``quick``) or the paper's size on ``device``
    (``batches``: decode and train on this many batches instead of the size's own count)."""
    size = dict(QUICK if quick else PAPER)
    if batches:
        size["decode_batches"], size["train_iters"] = int(batches), max(2, int(batches))
    dev = torch.device(device)
    torch.manual_seed(0)
    head = _method_module().OrderFreeRNNHead(size["channels"], size["labels"], size["hidden"], size["hidden"], size["hidden"]).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    train = time_training(head, size, dev)
    decode = time_decoding(head, size, dev)
    where = (f"{size['channels']}x{size['grid']}x{size['grid']} maps, {size['labels']} labels, "
             f"hidden {size['hidden']}, T={size['steps']}")
    search = f"beam {size['beam']}, batch {size['eval_batch']}"
    rows = [
        {"figure": f"order_free_rnn training, batch {size['batch']} ({where})", "value": train,
         "unit": "steps/s", "target": None},
        {"figure": f"order_free_rnn beam search ({search}; {where})",
         "value": size["eval_batch"] / decode["after"], "unit": "images/s", "target": None},
        {"figure": f"order_free_rnn attention keys W_v v_i before: per beam copy ({search})",
         "value": 1000 * decode["keys_per_beam"], "unit": "ms/batch", "target": None},
        {"figure": f"order_free_rnn attention keys W_v v_i after: per image ({search})",
         "value": 1000 * decode["keys_per_image"], "unit": "ms/batch", "target": None},
        {"figure": f"order_free_rnn one prediction before: keys per beam, 3 searches ({search})",
         "value": 1000 * decode["before"], "unit": "ms/batch", "target": None},
        {"figure": f"order_free_rnn one prediction after: keys per image, 1 search ({search})",
         "value": 1000 * decode["after"], "unit": "ms/batch", "target": None},
        {"figure": "order_free_rnn prediction speed-up (before / after)", "value": decode["before"] / decode["after"],
         "unit": "x", "target": None},
    ]
    if dev.type == "cuda":
        rows.append({"figure": "order_free_rnn peak GPU memory (training + decoding)",
                     "value": torch.cuda.max_memory_allocated(dev) / 2**20, "unit": "MiB", "target": None})
    else:
        rows.append({"figure": "order_free_rnn peak resident memory of the process (CPU)",
                     "value": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "unit": "MiB",
                     "target": None})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run in seconds)")
    parser.add_argument("--batches", type=int, default=None, help="decode (and train) this many batches")
    args = parser.parse_args(argv)
    rows = measure(args.device, args.quick, args.batches)
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# Order-Free RNN on {args.device} ({gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"| {'figure':<100} | {'value':>10} | unit     |")
    print(f"|{'-' * 102}|{'-' * 12}|----------|")
    for row in rows:
        print(f"| {row['figure']:<100} | {row['value']:>10.2f} | {row['unit']:<8} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
