"""Writing a Table as CSV (raw numbers), Markdown and LaTeX (booktabs) with the same bytes on every run.

CSV keeps the store's fractions at full precision (pandas writes the shortest
repr that reads back exactly), and every interval as two columns. Markdown,
LaTeX and HTML print accuracies as percentages with one decimal, each with its
interval ("85.3 [82.1, 88.0]", or "85.3 ±2.9" in wide grids), and
checkpoints as their first 8 hex digits.
Markdown is formatted here because DataFrame.to_markdown needs `tabulate`,
which the project does not install; LaTeX comes from pandas' Styler.to_latex
(jinja2, installed with torch).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robust_csc.atomic import atomic_write
from robust_csc.evaluation.stats import format_p
from robust_csc.reports.tables import INTEGER, LAMBDA, PERCENT, POINTS, PVALUE, RATIO, Table

SHA_COLUMN = "checkpoint_sha256"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def format_value(value, kind: str, column: str, na: str) -> str:
    if _missing(value):
        return na
    if column == SHA_COLUMN:
        return str(value)[:8]
    if kind == PERCENT:
        return f"{float(value) * 100:.1f}"
    if kind == POINTS:
        return f"{float(value) * 100:+.1f}"
    if kind == PVALUE:
        return format_p(float(value))
    if kind == LAMBDA:
        return f"{float(value):.2f}"  # one format for lambda everywhere (robust_csc.reports.names.lam)
    if kind == INTEGER:
        return str(int(value))
    if kind == RATIO:
        return f"{float(value):.3f}"
    return str(value)


def with_interval(text: str, value, low, high, kind: str, style: str) -> str:
    """text followed by its interval: " [lo, hi]" or " ±h" (h half the interval), in the value's unit."""
    if _missing(value) or _missing(low) or _missing(high):
        return text
    if style == "pm":
        return f"{text} ±{(float(high) - float(low)) * 50:.1f}"
    if kind == POINTS:
        return f"{text} [{float(low) * 100:+.1f}, {float(high) * 100:+.1f}]"
    return f"{text} [{float(low) * 100:.1f}, {float(high) * 100:.1f}]"


def display_frame(table: Table, na: str) -> pd.DataFrame:
    """Every cell as the text a person reads; the index (if shown) becomes the first column; an interval is
    printed with its value and its bound columns are not shown; neither are the CSV-only columns, nor a column
    that is empty in every row (a table shows what it has)."""
    frame = table.frame.reset_index() if table.index else table.frame
    hidden = {bound for bounds in table.intervals.values() for bound in bounds} | set(table.hidden)
    out = {}
    for column in frame.columns:
        if column in hidden:
            continue
        kind = table.kinds.get(column, "text")
        texts = [format_value(v, kind, column, na) for v in frame[column]]
        if len(frame) and all(t in (na, "") for t in texts):
            continue
        if column in table.intervals:
            low, high = table.intervals[column]
            texts = [with_interval(t, v, lo, hi, kind, table.interval_style)
                     for t, v, lo, hi in zip(texts, frame[column], frame[low], frame[high])]
        out[header_of(table, column)] = texts
    return pd.DataFrame(out, columns=list(out))


def header_of(table: Table, column) -> str:
    if column in table.headers:
        return table.headers[column]
    return "checkpoint" if column == SHA_COLUMN else str(column)


def numeric_columns(table: Table) -> set[str]:
    """The page's headers of the numeric columns (right-aligned)."""
    return {header_of(table, c) for c, kind in table.kinds.items() if kind in (PERCENT, POINTS, LAMBDA, INTEGER, RATIO, PVALUE)}


def to_csv(table: Table) -> str:
    return table.frame.to_csv(index=table.index, lineterminator="\n")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured pipe table; numbers right-aligned."""
    frame = display_frame(table, na="–")
    numeric = numeric_columns(table)
    headers = list(frame.columns)
    cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False, name=None)]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [h in numeric for h in headers]

    def line(values):
        padded = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in cells]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    """Caption text for LaTeX (Styler escapes the cells, not the caption)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule) in a table environment with caption and label.

    A "mean" row (the corruption tables) gets its own \\midrule above it.
    """
    frame = display_frame(table, na="--")
    numeric = numeric_columns(table)
    column_format = "".join("r" if c in numeric else "l" for c in frame.columns)
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    text = styler.to_latex(
        hrules=True,
        column_format=column_format,
        caption=_latex_escape(table.title),
        label=f"tab:{table.name}",
        position="htbp",
    )
    lines = text.splitlines()
    if table.index:
        lines = [(r"\midrule" + "\n" + ln) if ln.startswith("mean &") else ln for ln in lines]
    return "\n".join(lines) + "\n"


WRITERS = {"csv": to_csv, "md": to_markdown, "tex": to_latex}


def write_table(table: Table, folder: Path) -> dict[str, Path]:
    """table.name + .csv / .md / .tex (those in table.formats) in folder; {format: path}."""
    out = {}
    for fmt in table.formats:
        text = WRITERS[fmt](table)
        path = folder / f"{table.name}.{fmt}"
        atomic_write(path, lambda f, data=text.encode("utf-8"): f.write(data))
        out[fmt] = path
    return out
