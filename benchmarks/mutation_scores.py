"""The mutation score per module, from the last ``mutmut run`` (``tox -e mutation`` calls this).

Prints a Markdown table (module, mutants, killed, timed out, survived, no test, score) and then
every surviving mutant by name, so each can be looked at with ``mutmut show NAME``. The score is
(killed + timed out) / mutants: a mutant no test reaches counts as surviving.

    python benchmarks/mutation_scores.py            # after `mutmut run`, in the project root
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*(?P<name>[\w.]+)__mutmut_\d+: (?P<status>.+?)\s*$")
KILLED = ("killed", "timeout")


def module_of(mutant: str) -> str:
    """``bench.metrics.x_evaluate__mutmut_3`` -> ``bench/metrics.py`` (``x_`` prefixes the function,
    ``xǁClassǁmethod`` a method)."""
    dotted = mutant.split("__mutmut_")[0]
    return dotted.rsplit(".", 1)[0].replace(".", "/") + ".py"


def read_results() -> list[tuple[str, str]]:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        if (m := LINE.match(line)) is not None:
            rows.append((line.split(":")[0].strip(), m["status"]))
    return rows


def main() -> int:
    rows = read_results()
    if not rows:
        print("no mutmut results here: run `mutmut run` first", file=sys.stderr)
        return 1
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in rows:
        counts[module_of(name)][status] += 1
        if status not in KILLED:
            survivors[module_of(name)].append(f"{name} ({status})")
    print("| Module | Mutants | Killed | Timed out | Survived | No test | Score |")
    print("| --- | --: | --: | --: | --: | --: | --: |")
    total = Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        n = sum(c.values())
        print(f"| `{module}` | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
              f"| {100 * (c['killed'] + c['timeout']) / n:.1f} % |")
    n = sum(total.values())
    print(f"| all | {n} | {total['killed']} | {total['timeout']} | {total['survived']} | {total['no tests']} "
          f"| {100 * (total['killed'] + total['timeout']) / n:.1f} % |")
    for module, names in sorted(survivors.items()):
        print(f"\n{module}: {len(names)} not killed")
        for name in names:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
