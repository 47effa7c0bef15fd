"""The README and the pages of ``docs/`` are tested documents: every command and snippet they show
runs as shown, and every relative link between them reaches a file and a heading.

Each ``## `` section of ``README.md`` and of each ``docs/*.md`` (the text before a page's first
``## `` too) is a scenario, run from an empty working folder (results, reports and data folders of
its own; offline: the network is cut) in the page's order, so a command that reads an earlier
one's results (``bench report`` after ``bench run``) finds them:

* every ``bench ...`` command of a ```` ```bash ````, ```` ```sh ```` or ```` ```console ```` block
  (``$ `` lines of a console block; ``&&`` chains split) runs in-process through
  :func:`bench.cli.main`, reduced generically so that CI stays fast: ``bench run`` gets ``--smoke``
  (a one-epoch schedule) and ``--folds 2`` where it gives no ``--folds``; ``bench report`` gets
  ``--smoke`` (the scenario's runs are smoke runs); MLflow is off. It must exit 0, except where it
  cannot work offline: ``bench fetch`` must stop with the one line ``docs/cli.md`` shows ("cannot
  download ...; are you offline?"), and a run on a dataset whose files are not under the data root (an explicit
  ``--data-root`` points at an empty folder here) with one line naming the missing file (``bench
  reproduce``: one line per missing file, the dataset's first); a
  ``--device cuda`` command runs only where torch sees a GPU;
* every other command must be listed in :data:`NOT_RUN` with the reason it is not run here;
* every ```` ```python ```` block runs: a plug-in file (a class deriving from ``Method`` or
  ``Dataset``) is dropped into a plug-in folder, then ``bench list`` must show it and a method is
  run (``--smoke``) on an embedded dataset it accepts, a dataset on ``br`` (or, when its files are
  absent, refused in one line naming the file); any other snippet runs as a script in the
  scenario's folder (``data/`` is its data root).

Every relative link (``[text](docs/x.md#heading)``) must reach an existing file and heading, and the
README stays a front page: under 250 lines, linking every page of ``docs/``.

An edit that breaks an example or a link fails here, naming the file and line.
"""

from __future__ import annotations

import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import plugins, runner
from bench.cli import DEFAULT_DATASET, main
from bench.data import FEATURES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The tested documents: the README, then every page of docs/.
DOCUMENTS = (README, *sorted((ROOT / "docs").glob("*.md")))
#: The front page stays a front page (issue 28: "a newcomer reads it in five minutes").
README_MAX_LINES = 250
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
SUBCOMMANDS = ("list", "run", "report", "fetch", "reproduce")

#: Commands the README or docs show that this test does not run: (does the command match, why not).
NOT_RUN = (
    (lambda argv: _program(argv) == "pip" or argv[1:3] in (["-m", "pip"], ["-m", "venv"]),
     "installs packages from PyPI (network); CI's .ci/run does it"),
    (lambda argv: _program(argv) in ("ruff", "lint-imports") or "pytest" in argv,
     "CI's own commands: test_cli.py checks they are .ci/run's"),
    (lambda argv: _program(argv) in ("tox", "mutmut"), "runs the test suite itself (tox) or mutation testing (an hour)"),
    (lambda argv: _program(argv) == "mlflow" and "ui" in argv, "starts a web server"),
    (lambda argv: _program(argv).startswith("python") and any(a.startswith("benchmarks/") for a in argv),
     "a benchmark script (minutes of measurement; it prints a table)"),
)
#: The one-line errors of the commands that cannot work offline, as docs/cli.md documents them.
FETCH_OFFLINE = re.compile(r"bench: error: cannot download \S+ \(.+\); are you offline\? Put the files under \S+ "
                           r"by hand \(docs/datasets.md, 'Datasets on disk'\)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FILES_ABSENT = r"bench: error: {root}/\S+: .*not found.*"


@dataclass(frozen=True)
class Snippet:
    line: int  # where its block starts in its document (1-based)
    language: str
    text: str
    source: str = "README.md"  # the document, relative to the checkout


def _program(argv: list[str]) -> str:
    return Path(argv[0]).name if argv else ""


def sections(text: str, source: str = "README.md") -> dict[str, list[Snippet]]:
    """``## `` heading -> the shell and Python blocks under it, in order (``source`` names the document)."""
    out: dict[str, list[Snippet]] = {"(preamble)": []}
    current, block, start, language = "(preamble)", None, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if block is None and line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif block is None and line.startswith("```"):
            block, start, language = [], number, line[3:].strip().lower()
        elif block is not None and line.startswith("```"):
            if language in (*SHELL_LANGUAGES, "python"):
                out[current].append(Snippet(start, language, "\n".join(block) + "\n", source))
            block = None
        elif block is not None:
            block.append(line)
    return {name: snippets for name, snippets in out.items() if snippets}


def commands(snippet: Snippet) -> list[list[str]]:
    """The argv of every command of a shell block: continuations joined, comments dropped, ``&&``,
    ``||``, ``;`` and ``|`` chains split; in a console block only the ``$ `` lines."""
    lines = snippet.text.replace("\\\n", " ").splitlines()
    if snippet.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    out = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                if argv:
                    out.append(argv)
                argv = []
            else:
                argv.append(token)
    return out


def bench_args(argv: list[str]) -> list[str] | None:
    """The arguments of a ``bench`` command (``bench``, ``.venv/bin/bench``, ``python -m bench.cli``)."""
    if _program(argv) == "bench":
        return argv[1:]
    if _program(argv).startswith("python") and argv[1:3] == ["-m", "bench.cli"]:
        return argv[3:]
    return None


def not_run_reason(argv: list[str]) -> str | None:
    return next((reason for matches, reason in NOT_RUN if matches(argv)), None)


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _has(args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


class Scenario:
    """One section of the README or a docs page run from an empty folder: its commands in order, in this process."""

    def __init__(self, folder: Path, monkeypatch, capsys):
        self.folder, self.monkeypatch, self.capsys = folder, monkeypatch, capsys
        self.data_root, self.absent_root = folder / "data", folder / "absent-data-root"
        self.plugin_root = folder / "plugins"
        for path in (self.data_root, self.absent_root, self.plugin_root / "methods", self.plugin_root / "datasets"):
            path.mkdir(parents=True, exist_ok=True)
        for name, value in {"BENCH_RESULTS": folder / "results", "BENCH_REPORTS": folder / "reports",
                            "BENCH_DATA_ROOT": self.data_root, "BENCH_PLUGIN_PATH": self.plugin_root,
                            "BENCH_MLFLOW": "0"}.items():
            monkeypatch.setenv(name, str(value))
        monkeypatch.chdir(folder)
        monkeypatch.setattr(socket, "getaddrinfo", _offline)
        monkeypatch.setattr(socket.socket, "connect", _offline)
        self.log: list[str] = []

    # ------------------------------------------------------------------ shell commands
    def shell(self, snippet: Snippet) -> None:
        for argv in commands(snippet):
            where = f"{snippet.source}:{snippet.line}: `{shlex.join(argv)}`"
            env = {}
            while argv and ENV_ASSIGNMENT.match(argv[0]):  # `BENCH_THREADS=2 bench run ...`
                name, _, value = argv.pop(0).partition("=")
                env[name] = value
            args = bench_args(argv)
            if args is None:
                reason = not_run_reason(argv)
                assert reason, f"{where} is neither a bench command nor listed in NOT_RUN with a reason"
                self.log.append(f"not run ({reason}): {where}")
                continue
            with self.monkeypatch.context() as patch:
                for name, value in env.items():
                    patch.setenv(name, value)
                self.bench(args, where)

    def bench(self, args: list[str], where: str) -> None:
        command = next((a for a in args if a in SUBCOMMANDS), None)
        if (_option(args, "--device") or "").startswith("cuda") and not _has_cuda():
            self.log.append(f"not run (needs a CUDA GPU; tests/test_cuda.py covers it where one is): {where}")
            return
        args = list(args)
        if _has(args, "--data-root"):  # the page's own data root (e.g. /data) is not here
            value = _option(args, "--data-root")
            args = [str(self.absent_root) if a == value else a.replace(f"={value}", f"={self.absent_root}")
                    for a in args]
        if command == "run":
            args += [] if _has(args, "--smoke") else ["--smoke"]
            args += [] if _has(args, "--folds") else ["--folds", "2"]
            args += [] if _has(args, "--no-progress") else ["--no-progress"]
        if command == "report" and not _has(args, "--smoke"):
            args.append("--smoke")
        expected = self.expected_error(command, args)
        started = time.perf_counter()
        status, err = self.call(args)
        self.log.append(f"exit {status} in {time.perf_counter() - started:.1f} s: {where} as `bench {shlex.join(args)}`")
        if expected is None:
            assert status == 0, f"{where} (run as `bench {shlex.join(args)}`) exited {status}: {err}"
        elif command == "reproduce":  # one line per missing file, the dataset's first
            lines = err.strip().splitlines()
            assert status == 2 and re.fullmatch(expected, lines[0]) and all(
                line.startswith("bench: error: ") for line in lines), (
                f"{where} should stop offline with one line per missing file, the first matching {expected!r}; "
                f"got exit {status}: {err}")
        else:
            assert status == 2 and err.count("\n") == 1 and re.fullmatch(expected, err.strip()), (
                f"{where} should stop offline with one line matching {expected!r}; got exit {status}: {err}")

    def expected_error(self, command: str | None, args: list[str]) -> str | None:
        """The one-line error a command must stop with here, or None when it must succeed."""
        if command == "fetch":
            return FETCH_OFFLINE.pattern
        if command == "reproduce":  # a paper's data are never here: its run stops before any job
            if _has(args, "--plan") or _has(args, "--list"):
                return None
            root = re.escape(str(_option(args, "--data-root") or self.data_root))
            return rf"bench: error: [\w-]+: dataset files not found under {root} \(see .+\)"
        if command != "run":
            return None
        root = Path(_option(args, "--data-root") or self.data_root)
        names = (_option(args, "--dataset") or DEFAULT_DATASET).split(",")
        absent = [n for n in names if n != "all" and not _usable(n, root)]
        return FILES_ABSENT.format(root=re.escape(str(root))) if absent else None

    def call(self, args: list[str]) -> tuple[int, str]:
        """``bench ARGS`` as a fresh process would run it (plug-ins read anew)."""
        plugins.load.cache_clear()
        self.capsys.readouterr()
        try:
            status = main(args)
        except SystemExit as exc:  # --help, --version
            status = exc.code or 0
        captured = self.capsys.readouterr()
        self.out = captured.out
        return status, captured.err

    # ------------------------------------------------------------------ Python snippets
    def python(self, snippet: Snippet) -> None:
        where = f"{snippet.source}:{snippet.line} (python)"
        path = self.folder / "snippet.py"
        path.write_text(snippet.text)
        try:
            classes = plugins.parse(path, "snippet").classes.values()
        except SyntaxError as exc:
            pytest.fail(f"{where}: does not parse: {exc}")
        kinds = {kind for kind in plugins.KINDS for cls in classes
                 if "name" in cls.body and cls.derives_from(plugins.KINDS[kind])}
        if not kinds:
            code = compile(snippet.text, where, "exec")
            exec(code, {"__name__": "__main__"})  # noqa: S102 - the page's own example
            runner.load_dataset.cache_clear()  # it may have written a dataset's files
            self.log.append(f"ran as a script: {where}")
            return
        for kind in kinds:
            before = set(plugins.load(kind))
            module = re.sub(r"\W", "_", Path(snippet.source).stem)  # docs/protocols-and-metrics.md: no '-'
            target = self.plugin_root / kind / f"{module}_{snippet.line}.py"
            target.write_text(snippet.text)
            plugins.load.cache_clear()
            added = set(plugins.load(kind)) - before
            assert added, f"{where}: the plug-in file registers no new {kind[:-1]}"
            status, err = self.call(["list"])
            listed = {line.split()[0]: line.split()[1] for line in self.out.splitlines()
                      if line.startswith("  ") and len(line.split()) > 1}
            assert status == 0 and all(listed.get(name) not in (None, "broken") for name in added), (
                f"{where}: `bench list` does not show {sorted(added)}: {self.out}{err}")
            for name in sorted(added):
                self.try_plugin(kind, name, where)

    def try_plugin(self, kind: str, name: str, where: str) -> None:
        if kind == "methods":
            dataset = "yeast" if FEATURES in plugins.info("methods", name).accepts else "mnist-mosaic"
            self.bench(["run", "--method", name, "--dataset", dataset], f"{where}: method {name!r}")
            assert f"{name} (smoke)" in self.out, f"{where}: no table row for {name!r}: {self.out}"
        else:
            self.bench(["run", "--method", "br", "--dataset", name], f"{where}: dataset {name!r}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _usable(dataset: str, root: Path) -> bool:
    """Embedded, or its files are under ``root``; an unknown name too (the command itself must then
    exit 0, which its one-line error fails, naming it)."""
    if dataset not in plugins.load("datasets"):
        return True
    cls = plugins.get("datasets", dataset)
    return cls.embedded or cls().is_available(root)


def _offline(*args, **kwargs):
    raise OSError("network cut by tests/test_readme.py")


def run_section(snippets: list[Snippet], scenario: Scenario) -> list[str]:
    for snippet in snippets:
        if snippet.language == "python":
            scenario.python(snippet)
        else:
            scenario.shell(snippet)
    return scenario.log


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


#: (document, ``## `` heading) -> its snippets, every document in DOCUMENTS' order.
SECTIONS = {(_relative(path), name): snippets for path in DOCUMENTS
            for name, snippets in sections(path.read_text(), _relative(path)).items()}


@pytest.mark.parametrize("section", list(SECTIONS), ids=[f"{doc}::{name}" for doc, name in SECTIONS])
def test_readme_section_runs_as_documented(section, tmp_path, monkeypatch, capsys):
    log = run_section(SECTIONS[section], Scenario(tmp_path / "scenario", monkeypatch, capsys))
    print("\n".join(log))  # shown with -rP: what ran, how long it took, what was not run and why
    assert log  # every listed section has something to run or to account for


def test_every_bench_subcommand_the_readme_documents_is_run_somewhere():
    """A guard on this test's own reach: the documents' commands are found and each subcommand is
    among them (a parser that found nothing would pass every section vacuously), and every page of
    docs/ is among the documents read."""
    found = {next((a for a in args if a in SUBCOMMANDS), None)
             for snippets in SECTIONS.values() for s in snippets if s.language != "python"
             for argv in commands(s) if (args := bench_args(argv)) is not None}
    assert set(SUBCOMMANDS) <= found
    assert sum(s.language == "python" for snippets in SECTIONS.values() for s in snippets) >= 2
    assert {doc for doc, _ in SECTIONS} >= {"README.md", "docs/methods.md", "docs/datasets.md"}


# ---------------------------------------------------------------------- links and length
#: A Markdown link ``[text](target)`` (an image ``![...]`` too); its text may wrap lines.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`]*`")


def _blank(match: re.Match) -> str:
    """The matched text with every character but newlines blanked, so line numbers stay."""
    return re.sub(r"[^\n]", " ", match.group())


def prose(text: str) -> str:
    """``text`` without its code blocks and code spans (a link shown as code is not a link)."""
    return INLINE_CODE.sub(_blank, FENCE.sub(_blank, text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped (``-`` and
    ``_`` kept), spaces to ``-``; a repeated one gets ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub(_blank, text).splitlines():
        if match := re.match(r"#{1,6} +(.+?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file is missing, or whose ``#anchor`` names no heading
    of its (Markdown) file, as ``file:line: target (why)``."""
    text, out = path.read_text(), []
    for match in LINK.finditer(prose(text)):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        name = _relative(path) if path.is_relative_to(ROOT) else path.name
        where = f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {target}"
        if not resolved.exists():
            out.append(f"{where} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            out.append(f"{where} (no heading #{anchor} in {resolved.name})")
    return out


@pytest.mark.parametrize("path", DOCUMENTS, ids=_relative)
def test_every_relative_link_reaches_a_file_and_heading(path):
    assert broken_links(path) == []


def test_a_broken_link_is_found_with_its_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its `--tune` part\n")
    page = tmp_path / "README.md"
    page.write_text("# Front\n[fine](docs/a.md#its---tune-part) [also fine](#front)\n"
                    "`[code](nowhere.md)` and\n```\n[in a block](nowhere.md)\n```\n"
                    "[gone](docs/b.md) [wrong\nheading](docs/a.md#its-tune-part) [web](https://example.org/x)\n")
    assert broken_links(page) == [f"README.md:7: docs/b.md (no file {tmp_path / 'docs' / 'b.md'})",
                                  "README.md:7: docs/a.md#its-tune-part (no heading #its-tune-part in a.md)"]


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    linked = {(README.parent / m.group(1).partition("#")[0]).resolve() for m in LINK.finditer(prose(text))}
    assert [_relative(path) for path in DOCUMENTS[1:] if path.resolve() not in linked] == []


BROKEN = """
## Broken
```bash
bench run --method br --dataset yeast --set C=abc   # a typo in the value
```
"""
UNKNOWN = """
## Unknown
```bash
make install
```
"""


@pytest.mark.parametrize("text, source, message", [
    (BROKEN, "README.md", "README.md:3: `bench run --method br --dataset yeast --set C=abc` (run as "),
    (BROKEN, "docs/methods.md", "docs/methods.md:3: `bench run --method br --dataset yeast --set C=abc` (run as "),
    (BROKEN.replace("bench run", "BENCH_THREADS=0 bench run").replace(" --set C=abc", ""), "README.md",
     "README.md:3: `BENCH_THREADS=0 bench run --method br --dataset yeast` (run as "),
    (BROKEN.replace("yeast", "yaest"), "README.md", "exited 2: bench: error: unknown dataset 'yaest'"),
    (UNKNOWN, "docs/development.md", "docs/development.md:3: `make install` is neither a bench command nor listed in NOT_RUN"),
])
def test_a_broken_or_unlisted_readme_command_fails_naming_its_line(text, source, message, tmp_path, monkeypatch, capsys):
    [snippets] = sections(text, source).values()
    with pytest.raises(AssertionError, match=re.escape(message)):
        run_section(snippets, Scenario(tmp_path / "scenario", monkeypatch, capsys))


def test_a_gpu_command_is_accounted_for_where_torch_sees_no_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules[__name__], "_has_cuda", lambda: False)
    [snippets] = sections("## GPU\n```bash\nbench run --method der --device cuda:0\n```\n").values()
    log = run_section(snippets, Scenario(tmp_path / "scenario", monkeypatch, capsys))
    assert log == ["not run (needs a CUDA GPU; tests/test_cuda.py covers it where one is): "
                   "README.md:2: `bench run --method der --device cuda:0`"]
