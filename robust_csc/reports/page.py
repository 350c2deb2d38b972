"""The report as a document (sections of text, tables and figures) and its two renderings.

index.html is self-contained: inline CSS, every image a data: URI, no script,
no network. report.md is its Markdown twin and links the PNG files.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from robust_csc.reports.formats import numeric_columns, display_frame, to_markdown
from robust_csc.reports.tables import Table


@dataclass
class TableItem:
    table: Table
    files: dict  # format -> path relative to the report folder
    findings: list = field(default_factory=list)  # Finding items shown right under the table


@dataclass
class FigureItem:
    caption: str
    files: dict  # "png"/"pdf" -> path relative to the report folder


@dataclass
class Text:
    text: str
    note: bool = True  # a highlighted note; False: a plain paragraph


@dataclass
class Finding:
    """A sentence that states a result plainly (the key results' and the TTA comparison's)."""

    text: str


@dataclass
class Row:
    """Items shown side by side in the HTML page (one after the other in Markdown)."""

    items: list


@dataclass
class Link:
    text: str
    href: str  # relative to the report folder


@dataclass
class Section:
    anchor: str
    heading: str
    intro: str = ""
    items: list = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5em 2em 4em; color: #1d1d1f; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2.2em; }
h3 { margin-top: 1.6em; font-size: 1.1em; }
.subtitle { color: #57606a; margin-top: 0; }
nav ol { columns: 3; color: #0969da; margin: 0.3em 0 0; }
nav a, a { color: #0969da; text-decoration: none; }
p.about { color: #424a53; font-size: 0.92em; max-width: 70em; }
.scroll { overflow-x: auto; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.82em; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e5e8eb; white-space: nowrap; }
thead th { border-bottom: 2px solid #8c959f; text-align: left; background: #f6f8fa; white-space: normal;
           vertical-align: bottom; min-width: 4.5em; }
td.num, th.num { text-align: right; }
td.wrap { white-space: normal; min-width: 9em; }
tr:last-child td { border-bottom: 2px solid #8c959f; }
table.key { font-size: 0.86em; }
table.key td { white-space: normal; }
table.key td.num { white-space: nowrap; }
table.key th.num { min-width: 5em; }
span.ci, span.test { color: #57606a; font-size: 0.85em; }
p.small { font-size: 0.82em; margin: 0.2em 0; }
p.finding { font-size: 1.02em; margin: 0.45em 0; padding-left: 0.8em; border-left: 4px solid #2da44e; max-width: 70em; }
figure { margin: 1em 0 2em; break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #424a53; font-size: 0.88em; margin-top: 0.3em; }
.row { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
.row > div { min-width: 0; }
p.fact { margin: 0.2em 0; font-size: 0.9em; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 0.4em 0.8em; margin: 0.5em 0; font-size: 0.9em; }
code { background: #f6f8fa; padding: 0 0.25em; border-radius: 3px; font-size: 0.92em; }
@page { size: A4; margin: 12mm 10mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  .scroll { overflow: visible; }
  table { font-size: 7pt; width: 100%; table-layout: auto; }
  th, td { white-space: normal; padding: 0.15em 0.3em; }
  td.num { white-space: nowrap; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  figure img { max-width: 100%; max-height: 240mm; }
  .row { display: block; }
}
"""


def _table_html(table: Table) -> str:
    frame = display_frame(table, na="–")
    numeric = numeric_columns(table)
    # Long text (a setting's name, a difference with its test) wraps instead of widening the page.
    wide = {c for c in frame.columns if c not in numeric and frame[c].map(lambda v: len(str(v))).max() > 28} \
        if len(frame) else set()
    classes = [' class="num"' if c in numeric else (' class="wrap"' if c in wide else "") for c in frame.columns]
    num = ' class="num"'
    head = "".join(f"<th{num if c in numeric else ''}>{html.escape(str(c))}</th>" for c in frame.columns)
    cell = _stacked_cell if _key(table) else (lambda v: html.escape(str(v)))
    body = "\n".join(
        "<tr>" + "".join(f"<td{k}>{cell(v)}</td>" for v, k in zip(row, classes)) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    kind = ' class="key"' if table.name.startswith("key_results") else ""
    return f'<div class="scroll"><table{kind}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _stacked_cell(value) -> str:
    """"85.3 [82.1, 88.0]" as the value over its interval (narrow columns); a difference's test on its own line."""
    import re

    text = str(value)
    found = re.match(r"^(\S+(?: pts)?) (\[[^\]]+\])(, .*)?$", text)
    if not found:
        return html.escape(text)
    rest = f'<br><span class="test">{html.escape(found[3][2:])}</span>' if found[3] else ""
    return f'{html.escape(found[1])}<br><span class="ci">{html.escape(found[2])}</span>{rest}'


def _links_html(files: dict) -> str:
    links = " · ".join(f'<a href="{html.escape(str(path))}">{fmt.upper()}</a>' for fmt, path in files.items())
    return f'<p class="about">Files: {links}</p>'


def _table_head(item: TableItem) -> str:
    t = item.table
    if _key(t):  # the key results: the table right under its heading, how to read it after
        return f"<h3>{html.escape(t.title)}</h3>\n"
    about = f'<p class="about">{html.escape(t.about)}</p>' if t.about else ""
    return f"<h3>{html.escape(t.title)}</h3>\n{about}\n"


def _key(table: Table) -> bool:
    return table.name.startswith("key_results")


def _table_body(item: TableItem) -> str:
    t = item.table
    after = ""
    if t.footnote:
        after += f'<p class="about small">{html.escape(t.footnote)}</p>'
    if _key(t) and t.about:
        after += f'<p class="about small">{html.escape(t.about)}</p>'
    findings = "".join(_item_html(f, Path(".")) for f in item.findings)
    return f"{_table_html(t)}\n{findings}{after}{_links_html(item.files)}"


def _item_html(item, folder: Path) -> str:
    if isinstance(item, Finding):
        return f'<p class="finding">{html.escape(item.text)}</p>'
    if isinstance(item, Text):
        return f'<p class="{"note" if item.note else "fact"}">{html.escape(item.text)}</p>'
    if isinstance(item, Row):
        # A table's heading and explanation span the page; the table and its neighbours sit side by side.
        heads = "".join(_table_head(i) for i in item.items if isinstance(i, TableItem))
        cells = [_table_body(i) if isinstance(i, TableItem) else _item_html(i, folder) for i in item.items]
        return heads + '<div class="row">' + "".join(f"<div>{c}</div>" for c in cells) + "</div>"
    if isinstance(item, Link):
        return f'<p><a href="{html.escape(item.href)}">{html.escape(item.text)}</a></p>'
    if isinstance(item, TableItem):
        return _table_head(item) + _table_body(item)
    if isinstance(item, FigureItem):
        data = base64.b64encode((folder / item.files["png"]).read_bytes()).decode("ascii")
        pdf = item.files.get("pdf")
        link = f' (<a href="{html.escape(str(pdf))}">PDF</a>)' if pdf else ""
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(item.caption)}">'
            f"<figcaption>{html.escape(item.caption)}{link}</figcaption></figure>"
        )
    raise TypeError(type(item))


def render_html(doc: Document, folder: Path) -> str:
    """The whole page; images are read from folder and embedded."""
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.heading)}</a></li>' for s in doc.sections if s.level == 2)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        f'<p class="subtitle">{html.escape(doc.subtitle)}</p>',
    ]
    # The first section (the key results) opens the page; the contents follow it.
    for index, section in enumerate(doc.sections):
        if index == 1:
            parts.append(f"<nav><strong>Contents</strong><ol>{nav}</ol></nav>")
        tag = f"h{section.level}"
        parts.append(f'<section id="{section.anchor}"><{tag}>{html.escape(section.heading)}</{tag}>')
        if section.intro:
            parts.append(f'<p class="about">{html.escape(section.intro)}</p>')
        parts.extend(_item_html(item, folder) for item in section.items)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", "", doc.subtitle, ""]
    for section in doc.sections:
        lines += [f"{'#' * section.level} {section.heading}", ""]
        if section.intro:
            lines += [section.intro, ""]
        items = [i for item in section.items for i in (item.items if isinstance(item, Row) else [item])]
        for item in items:
            if isinstance(item, Finding):
                lines += [f"**{item.text}**", ""]
            elif isinstance(item, Text):
                lines += [f"> {item.text}" if item.note else item.text, ""]
            elif isinstance(item, Link):
                lines += [f"[{item.text}]({item.href})", ""]
            elif isinstance(item, TableItem):
                t = item.table
                files = ", ".join(f"[{fmt.upper()}]({path})" for fmt, path in item.files.items())
                lines += [f"**{t.title}**", "", t.about, "", to_markdown(t)]
                lines += [line for f in item.findings for line in (f"**{f.text}**", "")]
                if t.footnote:
                    lines += [t.footnote, ""]
                lines += [f"Files: {files}", ""]
            elif isinstance(item, FigureItem):
                pdf = f" ([PDF]({item.files['pdf']}))" if "pdf" in item.files else ""
                lines += [f"![{item.caption}]({item.files['png']})", "", f"*{item.caption}*{pdf}", ""]
    return "\n".join(lines).rstrip() + "\n"
