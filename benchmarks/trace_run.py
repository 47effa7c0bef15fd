"""Which of the core's modules a `bench run` passes through, and in what order (issue 30).

Runs one `bench run` in this process under :func:`sys.setprofile` and follows where control is:
after each call into, and each return to, a function of ``bench/``, the module of the innermost
``bench/`` frame on the stack. Consecutive events in the same module are one *stay*; a stay in a
module that control had already left is a *return*. Module-level code (imports) is not followed,
nor are library or plug-in frames (``methods/``, ``datasets/``): a call from the worker into a
method and back stays in the worker.

Printed: the counts over every module of the core, then the *run side* alone (cli, jobs, runner,
backends, worker, outputs, store; the calls between them, moves through other modules left out):
the order in which each is first entered, and every call from one of them into another, by edge.

The results and reports go to a temporary folder, so no job is skipped as stored. ``--root PATH``
traces another checkout of the project (for instance the code before the split:
``git archive <commit> | tar -x -C /tmp/old``); run the script from outside that checkout.

    python benchmarks/trace_run.py                       # bench run --method br --dataset yeast --folds 2 --smoke
    python benchmarks/trace_run.py --root /tmp/old -- --method br --dataset yeast --folds 2 --smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

DEFAULT_RUN = ["--method", "br", "--dataset", "yeast", "--folds", "2", "--smoke"]
#: The run side's modules, in the order a command's arguments should meet them (issue 30).
RUN_SIDE = ("cli", "jobs", "runner", "backends", "worker", "outputs", "store")


class ModuleTrail:
    """Where control is among the modules of one package folder (see the module docstring)."""

    def __init__(self, package_dir: Path):
        self.prefix = str(package_dir) + os.sep
        self.current: str | None = None
        self.moves: list[tuple[str | None, str]] = []  # (from, to): every change of module, calls and returns
        self.calls: list[tuple[str, str, str]] = []  # (caller, callee, function called): the calls among them

    def module(self, frame) -> str | None:
        """The dotted module name (without the package) of a frame of the package, else None."""
        path = frame.f_code.co_filename
        if not path.startswith(self.prefix):
            return None
        return path[len(self.prefix):].removesuffix(".py").replace(os.sep, ".").removesuffix(".__init__")

    def innermost(self, frame) -> tuple[str | None, bool]:
        """The module of the innermost package frame from ``frame`` outwards, and whether an import
        is under way (a module body on the stack: its class bodies and decorators are not followed)."""
        name = None
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") != "__main__":
                return None, True
            if name is None:
                name = self.module(frame)
            frame = frame.f_back
        return name, False

    def profile(self, frame, event, arg):
        if event == "call" and self.module(frame) is not None:
            name, importing = self.innermost(frame)
            if not importing and self.current is not None and name != self.current:
                self.calls.append((self.current, name, frame.f_code.co_qualname))
        elif event == "return" and self.module(frame) is not None:
            name, importing = self.innermost(frame.f_back)
        else:
            return
        if not importing and name is not None and name != self.current:
            self.moves.append((self.current, name))
            self.current = name


def stays(moves: list[tuple[str | None, str]], keep=lambda name: name) -> list[str]:
    """The stays, in order: the modules control moved to, each module mapped by ``keep`` (None:
    dropped, with the moves from and to it), consecutive repeats merged."""
    out: list[str] = []
    for source, target in moves:
        here, there = keep(source) if source else None, keep(target)
        if there is None or (source is not None and here is None):
            continue
        if not out or out[-1] != there:
            out.append(there)
    return out


def returns(path: list[str]) -> int:
    """The stays in a module that control had already left."""
    return sum(1 for i, name in enumerate(path) if name in path[:i])


def run_side(name: str) -> str | None:
    """The run-side room a module belongs to (``backends.local`` -> ``backends``), else None."""
    top = name.split(".")[0]
    top = "backends" if top == "ray_backend" else top  # the Ray backend before it moved into backends/
    return top if top in RUN_SIDE else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="the checkout to trace (default: the installed bench)")
    parser.add_argument("run", nargs="*", help="bench run's arguments (after --)")
    args = parser.parse_args()
    if args.root is not None:
        sys.path.insert(0, str(args.root.resolve()))
    from bench import cli  # the checkout asked for (or the installed one)

    package_dir = Path(cli.__file__).resolve().parent
    argv = ["run", *(args.run or DEFAULT_RUN), "--no-mlflow", "--no-progress", "--jobs", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_RESULTS"], os.environ["BENCH_REPORTS"] = f"{tmp}/results", f"{tmp}/reports"
        trail = ModuleTrail(package_dir)
        threading.setprofile(trail.profile)
        sys.setprofile(trail.profile)
        try:
            rc = cli.main(argv)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    full, side = stays(trail.moves), stays(trail.moves, run_side)
    print(f"\n`bench {' '.join(argv)}` in {package_dir} (exit {rc})")
    print(f"every module: {len(set(full))} modules in {len(full)} stays, returning to a module already left "
          f"{returns(full)} times")
    calls = [(run_side(a), run_side(b), f) for a, b, f in trail.calls]
    calls = [(a, b, f) for a, b, f in calls if a and b and a != b]
    first = list(dict.fromkeys(b for _, b, _ in calls))
    functions: dict[tuple[str, str], Counter] = {}
    for a, b, f in calls:
        functions.setdefault((a, b), Counter())[f] += 1
    print(f"the run side ({', '.join(RUN_SIDE)}), calls between its modules (through other modules: left out)")
    print("  first entered, in order: cli -> " + " -> ".join(first))
    print("  every call, by edge, in order of the first (the functions called):")
    for (a, b), called in functions.items():
        print(f"    {a} -> {b} x{sum(called.values())}:", ", ".join(f"{f} x{n}" for f, n in called.items()))
    print(f"  {len(calls)} calls, {len(side)} stays (a return counts as a stay), "
          f"returning to a module already left {returns(side)} times")

if __name__ == "__main__":
    main()
