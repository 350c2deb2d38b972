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


@dataclass
class FigureItem:
    caption: str
    files: dict  # "png"/"pdf" -> path relative to the report folder


@dataclass
class Text:
    text: str
    note: bool = True  # a highlighted note; False: a plain paragraph


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
nav ol { columns: 2; color: #0969da; }
nav a, a { color: #0969da; text-decoration: none; }
p.about { color: #424a53; font-size: 0.92em; max-width: 70em; }
.scroll { overflow-x: auto; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.82em; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e5e8eb; white-space: nowrap; }
thead th { border-bottom: 2px solid #8c959f; text-align: left; background: #f6f8fa; white-space: normal;
           vertical-align: bottom; }
td.num, th.num { text-align: right; }
tr:last-child td { border-bottom: 2px solid #8c959f; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #424a53; font-size: 0.88em; margin-top: 0.3em; }
.row { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
.row > div { min-width: 0; }
p.fact { margin: 0.2em 0; font-size: 0.9em; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 0.4em 0.8em; margin: 0.5em 0; font-size: 0.9em; }
code { background: #f6f8fa; padding: 0 0.25em; border-radius: 3px; font-size: 0.92em; }
"""


def _table_html(table: Table) -> str:
    frame = display_frame(table, na="–")
    numeric = numeric_columns(table)
    classes = [' class="num"' if c in numeric else "" for c in frame.columns]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(frame.columns, classes))
    body = "\n".join(
        "<tr>" + "".join(f"<td{k}>{html.escape(str(v))}</td>" for v, k in zip(row, classes)) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _links_html(files: dict) -> str:
    links = " · ".join(f'<a href="{html.escape(str(path))}">{fmt.upper()}</a>' for fmt, path in files.items())
    return f'<p class="about">Files: {links}</p>'


def _table_head(item: TableItem) -> str:
    t = item.table
    about = f'<p class="about">{html.escape(t.about)}</p>' if t.about else ""
    return f"<h3>{html.escape(t.title)}</h3>\n{about}\n"


def _table_body(item: TableItem) -> str:
    return f"{_table_html(item.table)}\n{_links_html(item.files)}"


def _item_html(item, folder: Path) -> str:
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
        f"<nav><strong>Contents</strong><ol>{nav}</ol></nav>",
    ]
    for section in doc.sections:
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
            if isinstance(item, Text):
                lines += [f"> {item.text}" if item.note else item.text, ""]
            elif isinstance(item, Link):
                lines += [f"[{item.text}]({item.href})", ""]
            elif isinstance(item, TableItem):
                t = item.table
                files = ", ".join(f"[{fmt.upper()}]({path})" for fmt, path in item.files.items())
                lines += [f"**{t.title}**", "", t.about, "", to_markdown(t), f"Files: {files}", ""]
            elif isinstance(item, FigureItem):
                pdf = f" ([PDF]({item.files['pdf']}))" if "pdf" in item.files else ""
                lines += [f"![{item.caption}]({item.files['png']})", "", f"*{item.caption}*{pdf}", ""]
    return "\n".join(lines).rstrip() + "\n"
