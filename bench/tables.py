"""A table of aggregated numbers and its two renderers: Markdown (GitHub) and LaTeX (booktabs).

:class:`Table` knows nothing of records or the store: :mod:`bench.report` and :mod:`bench.stats`
build tables from the results layer, this module presents them.

In every column the best value is in bold and the second best underlined (lowest for losses,
highest otherwise), compared *as printed* so that a tie on the page is a tie in the marks. A row
with fewer runs than a complete one (its folds x seeds) or than the most complete row of its table
is marked with a dagger and its run count.

LaTeX output fits ``\\textwidth`` of the ``article`` class (345 pt) at ``\\small``: the width of each
column is estimated from the widths of Computer Modern's glyphs at 9 pt (measured with pdflatex,
:data:`_GLYPH_PT`), headers and row names wrap at spaces, a table with more metrics than rows is
transposed (metrics as rows), and one that is still too wide is split into several tables
("part 1 of 3"), each repeating the row names. ``tests/test_latex.py`` compiles every kind of
generated table with pdflatex and checks that nothing is overfull.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import METRICS, direction_arrow
from bench.store import atomic_write_bytes

DECIMALS = 3
PER_CLASS_PREFIX = "ap:"
MARKS = "best in bold, second underlined"


@dataclass(frozen=True)
class Table:
    """The aggregated numbers of one table, and how to present them.

    ``mean``/``std`` have one row per table row (indexed by its label) and one column per metric
    key (or ``ap:<class>``); ``runs`` the number of runs behind each row; ``undefined`` the entries
    left out of averages, summed over runs; ``directions`` overrides which way is better for a
    column (True: higher), ``headers`` its printed name; ``notes`` are printed under the table.
    """

    slug: str  # the file stem: ``yeast__kfold10``
    caption: str
    mean: pd.DataFrame
    std: pd.DataFrame
    runs: pd.Series
    undefined: Mapping[str, int] = field(default_factory=dict)
    kind: str = "main"  # main | per_class | ablation | leaderboard
    dataset: str = ""
    protocol: str = ""
    n_folds: int = 0
    family: str = ""  # the ablation family's method
    directions: Mapping[str, bool] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    show_std: bool = True
    #: the runs a complete row has (its folds x seeds), by row label; None: the most complete row's
    expected: pd.Series | None = None

    def higher_is_better(self, column: str) -> bool:
        if column in self.directions:
            return self.directions[column]
        return column.startswith(PER_CLASS_PREFIX) or METRICS[column].higher_is_better

    def header(self, column: str) -> str:
        if column in self.headers:
            return self.headers[column]
        if column.startswith(PER_CLASS_PREFIX):
            return column[len(PER_CLASS_PREFIX):]
        return f"{METRICS[column].label} {direction_arrow(column)}"


# --------------------------------------------------------------------------- shared by both formats
def _shown(table: Table, column: str) -> pd.Series:
    """The column's means as printed (rounded), so that marks follow what a reader sees."""
    return table.mean[column].astype(float).round(DECIMALS).dropna()


def marks(table: Table) -> dict[str, dict[str, str]]:
    """For each column, ``{row: "best" | "second"}`` by competition rank of the printed values.

    Rank = 1 + the number of rows printed strictly better. Rank 1 is bold (ties share it), rank 2
    underlined; after a tie for the best there is no second. Nothing is underlined in a column with
    fewer than three values (the second of two is simply the other one).
    """
    out = {}
    for column in table.mean.columns:
        shown = _shown(table, column)
        values = -shown if table.higher_is_better(column) else shown
        rank = values.rank(method="min")
        col = dict.fromkeys(rank.index[rank == 1], "best")
        if len(shown) >= 3:
            col.update(dict.fromkeys(rank.index[rank == 2], "second"))
        out[column] = col
    return out


def _number(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.{DECIMALS}f}"


def _cell_parts(table: Table, row: str, column: str) -> tuple[str, str]:
    """(mean, std) as printed; std is "" when not shown or not defined."""
    mean, std = table.mean.at[row, column], table.std.at[row, column]
    if not table.show_std or np.isnan(mean) or np.isnan(std):
        return _number(mean), ""
    return _number(mean), f"{std:.{DECIMALS}f}"


def row_name(table: Table, row: str) -> str:
    """The row's label, with a dagger and its run count when it has fewer runs than a complete row
    (its folds x seeds: 3 of 4 folds after a re-run failed, also when every row misses one) or
    than the most complete row of the table."""
    full = table.runs.max()
    if table.expected is not None and row in table.expected.index:
        full = max(full, int(table.expected[row]))
    return row if table.runs[row] >= full else f"{row} † ({table.runs[row]}/{full} runs)"


def footnotes(table: Table) -> list[str]:
    notes = list(table.notes)
    if table.undefined:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(table.undefined.items()))
        notes.append(f"Undefined entries left out of averages, summed over runs (labels or examples): {parts}.")
    return notes


# --------------------------------------------------------------------------- Markdown
MD_MARK = {"best": "**{}**", "second": "<u>{}</u>", None: "{}"}


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(table: Table, transpose: bool = False) -> str:
    """A GitHub-flavoured Markdown table; ``transpose`` puts metrics in rows (terminal-friendly).

    Best cells are ``**bold**``, second-best ``<u>underlined</u>`` (GitHub renders the HTML tag)."""
    mark = marks(table)
    metrics = list(table.mean.columns)
    cells = {}
    for row in table.mean.index:
        for m in metrics:
            mean, std = _cell_parts(table, row, m)
            cells[row, m] = MD_MARK[mark[m].get(row)].format(f"{mean} ± {std}" if std else mean)
    heads = {m: table.header(m) for m in metrics}
    rows = [row_name(table, r) for r in table.mean.index]
    if transpose:
        header = ["Metric", *rows]
        body = [[heads[m], *(cells[r, m] for r in table.mean.index)] for m in metrics]
    else:
        header = ["Method", *(heads[m] for m in metrics)]
        body = [[name, *(cells[r, m] for m in metrics)] for name, r in zip(rows, table.mean.index, strict=True)]
    lines = [f"**Table: {table.caption}**", "", md_row(header), md_row(["---"] + [":-:"] * (len(header) - 1))]
    lines += [md_row(line) for line in body]
    if notes := footnotes(table):
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "†": r"$^\dagger$",
                  "χ": r"$\chi$", "²": r"$^2$", "α": r"$\alpha$", "−": "-", "Δ": r"$\Delta$", "<": r"$<$",
                  ">": r"$>$", "–": "--"}
TEX_MARK = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", None: "{}"}

#: ``\textwidth`` and ``\textheight`` of LaTeX's ``article`` class (10 pt, letter paper), in points.
TEXTWIDTH_PT = 345.0
TEXTHEIGHT_PT = 550.0
TABCOLSEP_PT = 6.0
FONT = r"\small"
LINE_PT, NOTE_LINE_PT = 11.0, 9.5  # \baselineskip at \small and \footnotesize
#: Caption skip, booktabs rules and a margin: the height of a float that is not lines of text.
FLOAT_EXTRA_PT = 50.0
#: Glyph widths of Computer Modern at ``\small`` (9 pt), in points, measured with pdflatex
#: (``\settowidth`` of each printable character; the symbols as this module typesets them).
_GLYPH_PT = {
    **dict.fromkeys("il!',.:;[]`", 2.57), **dict.fromkeys("fj", 2.83), **dict.fromkeys("- ", 3.08),
    "_": 3.33, "I": 3.34, **dict.fromkeys("t()", 3.6), "r": 3.62, "s": 3.65, "†": 3.94,
    **dict.fromkeys("cez", 4.11), "²": 4.17, "?": 4.37, **dict.fromkeys('0123456789ago"*/{}$~^\\↓↑–', 4.62),
    "J": 4.75, **dict.fromkeys("kqvxy", 4.88), **dict.fromkeys("bdhnpuS", 5.14), "Z": 5.65, "χ": 5.77,
    "L": 5.78, "α": 5.94, "F": 6.04, **dict.fromkeys("EP", 6.29), "B": 6.55, **dict.fromkeys("wCT", 6.68),
    "R": 6.81, **dict.fromkeys("AHNUVXY", 6.94), "D": 7.07, **dict.fromkeys("KOQ+<=>@&±", 7.19), "G": 7.26,
    **dict.fromkeys("m%#Δ", 7.71), "M": 8.48, "|": 9.25, "W": 9.51,
}
_BOLD = 1.27  # the widest bold/regular ratio of those glyphs
_SAFETY = 1.04  # kerning and rounding


def text_width(text: str, bold: bool = False) -> float:
    """Estimated width in points of ``text`` typeset at :data:`FONT`."""
    return sum(_GLYPH_PT.get(ch, 9.51) for ch in text) * (_BOLD if bold else 1.0) * _SAFETY


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _pieces(word: str, limit: float) -> list[str]:
    """A word wider than ``limit`` split after its underscores (``order_free_`` ``rnn``), if it has any."""
    if text_width(word) <= limit or "_" not in word:
        return [word]
    out = [""]
    for part in word.split("_"):
        part = f"{part}_"
        if out[-1] and text_width(out[-1] + part) > limit:
            out.append("")
        out[-1] += part
    out[-1] = out[-1][:-1]
    return [p for p in out if p]


def wrap(text: str, limit: float) -> list[str]:
    """``text`` broken at spaces (and a too-wide word after its underscores) into lines of at
    most ``limit`` points where it can be."""
    lines: list[str] = []
    for word in (p for w in text.split(" ") for p in _pieces(w, limit)):
        if lines and text_width(f"{lines[-1]} {word}") <= limit:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _stacked(lines: list[str], align: str, valign: str) -> str:
    if len(lines) == 1:
        return latex_escape(lines[0])
    body = r" \\ ".join(latex_escape(line) for line in lines)
    return rf"\begin{{tabular}}[{valign}]{{@{{}}{align}@{{}}}}{body}\end{{tabular}}"


@dataclass(frozen=True)
class _Cell:
    """One LaTeX cell: its TeX, estimated width and number of lines."""

    tex: str
    width: float
    lines: int = 1

    @classmethod
    def text(cls, text: str, limit: float, align: str = "c", valign: str = "b") -> _Cell:
        lines = wrap(text, limit)
        return cls(_stacked(lines, align, valign), max(text_width(line) for line in lines), len(lines))


def _number_cell(table: Table, row: str, column: str, mark: str | None) -> _Cell:
    mean, std = _cell_parts(table, row, column)
    tex = TEX_MARK[mark].format(latex_escape(mean))
    width = text_width(mean, bold=mark == "best")
    if std:
        tex += rf" $\pm$ {std}"
        width += text_width(f" ± {std}")
    return _Cell(tex, width)


#: Row names and headers wrap at this width (a column of numbers is ~60 pt wide).
NAME_LIMIT_PT = 110.0
HEADER_LIMIT_PT = 62.0


def _grid(table: Table, transpose: bool, wrapped: bool) -> tuple[list[_Cell], list[_Cell], list[list[_Cell]]]:
    """(column headers, row headers, cells[row][column]) in the chosen orientation; ``wrapped``
    breaks long headers and row names into lines."""
    mark = marks(table)
    metrics, rows = list(table.mean.columns), list(table.mean.index)
    numbers = [[_number_cell(table, r, m, mark[m].get(r)) for m in metrics] for r in rows]
    names = [row_name(table, r) for r in rows]
    heads = [table.header(m) for m in metrics]
    if transpose:
        numbers = [list(col) for col in zip(*numbers, strict=True)]
        names, heads = heads, names
    column_limit = max(HEADER_LIMIT_PT, *(c.width for line in numbers for c in line)) if wrapped else math.inf
    name_limit = NAME_LIMIT_PT if wrapped else math.inf
    return ([_Cell.text(h, column_limit) for h in heads],
            [_Cell.text(n, name_limit, align="l", valign="t") for n in names], numbers)


def _parts(widths: list[float], first: float) -> list[list[int]]:
    """Columns packed greedily, in order, into parts whose width with the first column fits."""
    parts: list[list[int]] = [[]]
    used = first + 2 * TABCOLSEP_PT
    for i, width in enumerate(widths):
        need = width + 2 * TABCOLSEP_PT
        if parts[-1] and used + need > TEXTWIDTH_PT:
            parts.append([])
            used = first + 2 * TABCOLSEP_PT
        parts[-1].append(i)
        used += need
    return parts


def _layout(table: Table, transpose: bool, wrapped: bool):
    heads, names, cells = _grid(table, transpose, wrapped)
    widths = [max(h.width, *(line[j].width for line in cells)) for j, h in enumerate(heads)]
    first = max([n.width for n in names] + [text_width("Metric" if transpose else "Method")])
    return heads, names, cells, _parts(widths, first)


def _text_lines(text: str, width: float, scale: float = 1.0) -> int:
    return max(1, math.ceil(text_width(text) * scale / width))


def _row_chunks(heights: list[int], caption: str, header_lines: int, notes: list[str]) -> list[list[int]]:
    """Body rows (each ``heights[i]`` lines) in chunks that fit ``\\textheight`` with the caption,
    header and notes (a float taller than a page does not compile cleanly)."""
    fixed = (FLOAT_EXTRA_PT + LINE_PT * (_text_lines(caption + " (Part 10 of 10.)", TEXTWIDTH_PT) + header_lines)
             + sum(NOTE_LINE_PT * _text_lines(n, TEXTWIDTH_PT, 0.85) + 3 for n in notes))
    room = max(TEXTHEIGHT_PT - fixed, 3 * LINE_PT)
    chunks: list[list[int]] = [[]]
    used = 0.0
    for i, lines in enumerate(heights):
        if chunks[-1] and used + lines * LINE_PT > room:
            chunks.append([])
            used = 0.0
        chunks[-1].append(i)
        used += lines * LINE_PT
    return chunks


def _floats(caption: str, slug: str, spec_of, parts: list[tuple[list[str], list[list[str]]]],
            notes: list[str]) -> str:
    """``parts`` (header, body) as consecutive floats, "(Part k of n.)" when more than one."""
    out = []
    for k, (header, body) in enumerate(parts, 1):
        text = caption if len(parts) == 1 else f"{caption} (Part {k} of {len(parts)}.)"
        label = slug if k == 1 else f"{slug}:{k}"
        out.append(_float(text, label, spec_of(len(header)), header, body, notes if k == len(parts) else ()))
    return "\n".join(out)


def to_latex(table: Table) -> str:
    """booktabs table(s) (needs ``\\usepackage{booktabs}``) that fit ``\\textwidth`` and
    ``\\textheight``; the mark covers the mean, not the std. A table too wide even when transposed,
    or too long, becomes several floats."""
    # The layout in the fewest parts; on a tie, unwrapped before wrapped, metrics as columns first.
    layouts = [(transpose, _layout(table, transpose, wrapped)) for wrapped in (False, True) for transpose in (False, True)]
    transpose, (heads, names, cells, columns_parts) = min(layouts, key=lambda item: len(item[1][3]))
    corner = "Metric" if transpose else "Method"
    notes = footnotes(table)
    parts = []
    for columns in columns_parts:
        header = [corner, *(heads[j].tex for j in columns)]
        heights = [max(names[i].lines, 1) for i in range(len(names))]
        for rows in _row_chunks(heights, table.caption, max(heads[j].lines for j in columns), notes):
            parts.append((header, [[names[i].tex, *(cells[i][j].tex for j in columns)] for i in rows]))
    return _floats(table.caption, table.slug, lambda n: "l" + "c" * (n - 1), parts, notes)


def _float(caption: str, label: str, spec: str, header: list[str], body: list[list[str]],
           notes: Iterable[str] = ()) -> str:
    """One ``table`` float around a booktabs tabular."""
    lines = [r"\begin{table}[t]", r"\centering", FONT, rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule", *(" & ".join(row) + r" \\" for row in body),
             r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip\footnotesize {latex_escape(note)}" for note in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def latex_text_table(caption: str, label: str, header: list[str], rows: list[list[str] | str], align: str,
                     wrap_columns: Iterable[int] = ()) -> str:
    """A booktabs table of text cells; a row given as a string is a heading across all columns
    (in italics). The columns in ``wrap_columns`` share the width the others leave and wrap at
    spaces (the Wilcoxon pairs of the leaderboard); a long table is split into floats."""
    wrap_columns = set(wrap_columns)
    lines = [r for r in rows if not isinstance(r, str)]
    natural = [max(text_width(c) for c in [h, *(r[j] for r in lines)]) for j, h in enumerate(header)]
    fixed = sum(w for j, w in enumerate(natural) if j not in wrap_columns)
    room = TEXTWIDTH_PT - 2 * TABCOLSEP_PT * len(header) - fixed
    limit = max(room / max(len(wrap_columns), 1), 40.0)
    cells = []
    for row in rows:
        if isinstance(row, str):
            cells.append([_Cell(rf"\multicolumn{{{len(header)}}}{{l}}{{\textit{{{latex_escape(row)}}}}}", 0.0)])
        else:
            cells.append([_Cell.text(c, limit, align="l", valign="t") if j in wrap_columns
                          else _Cell(latex_escape(c), 0.0) for j, c in enumerate(row)])
    heads = [latex_escape(h) for h in header]
    chunks = _row_chunks([max(c.lines for c in r) for r in cells], caption, 1, [])
    parts = [(heads, [[c.tex for c in cells[i]] for i in chunk]) for chunk in chunks]
    return _floats(caption, label, lambda n: align, parts, [])


RENDERERS: dict[str, tuple[Callable[[Table], str], str]] = {"md": (to_markdown, ".md"), "latex": (to_latex, ".tex")}


def write_tables(tables: Iterable[Table], out_dir: Path, formats=("md", "latex")) -> list[Path]:
    """Write each table as ``<slug>.md`` / ``<slug>.tex`` (atomically)."""
    written = []
    for table in tables:
        for fmt in formats:
            fn, ext = RENDERERS[fmt]
            written.append(write_text(Path(out_dir) / f"{table.slug}{ext}", fn(table)))
    return written


def write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode())
    return path
