"""Building blocks of the self-contained HTML reports: one file per page with inline CSS, inline images (PNG data
URIs) and a small inline script that sorts tables. Nothing refers to the network (clinics read them offline)."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CSS = """
:root { --ink: #1f2933; --muted: #5f6b7a; --line: #d9dee5; --band: #f4f6f9; --accent: #1f5f99; --warn: #9a3b00; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header.top { border-bottom: 2px solid var(--accent); padding-bottom: 12px; margin-bottom: 8px; }
h1 { font-size: 1.55em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02em; margin: 18px 0 6px; }
p.meta { color: var(--muted); margin: 2px 0; font-size: 0.92em; word-break: break-all; }
.figures { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 4px; }
.figure-box { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 128px;
  background: var(--band); }
.figure-box .label { color: var(--muted); font-size: 0.8em; text-transform: uppercase; letter-spacing: 0.03em; }
.figure-box .value { font-size: 1.25em; font-weight: 600; }
.figure-box .hint { color: var(--muted); font-size: 0.78em; }
figure { margin: 12px 0 20px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.88em; margin-top: 6px; max-width: 960px; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; white-space: nowrap; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.clip { max-width: 15em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: #a0a8b3; font-weight: 400; }
table.sortable th[aria-sort="ascending"]::after { content: " \\2191"; color: var(--accent); }
table.sortable th[aria-sort="descending"]::after { content: " \\2193"; color: var(--accent); }
td.flag { background: #fde8d8; font-weight: 600; }
a { color: var(--accent); }
.caveat { border-left: 4px solid var(--warn); background: #fff4ec; padding: 8px 12px; margin: 10px 0; }
.muted { color: var(--muted); }
dl.definitions dt { font-weight: 600; margin-top: 8px; }
dl.definitions dd { margin: 2px 0 0 18px; color: var(--muted); font-size: 0.9em; }
footer { margin-top: 36px; color: var(--muted); font-size: 0.82em; border-top: 1px solid var(--line);
  padding-top: 8px; }
"""

# Sorts the body rows of every table.sortable by the clicked header (again: reversed). A cell's data-sort (if any)
# is its key; columns whose header has data-type="number" compare numerically; empty keys always go last.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.querySelectorAll("thead th");
  headers.forEach(function (header, column) {
    header.tabIndex = 0;
    function sortRows() {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      var numeric = header.dataset.type === "number";
      headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      function key(row) {
        var cell = row.cells[column];
        var raw = (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent).trim();
        if (raw === "") { return null; }
        return numeric ? parseFloat(raw) : raw.toLowerCase();
      }
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var order = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true});
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    }
    header.addEventListener("click", sortRows);
    header.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortRows(); }
    });
  });
});
"""

NOT_AVAILABLE = "n/a"


def escape(value) -> str:
    """Text (any value, str() of it) safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def is_number(value) -> bool:
    """A finite int or float (not None, NaN, inf or bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_text(value, spec: str, unit: str = "") -> str:
    """A figure formatted with spec and its unit, or "n/a" when missing (None, NaN): never 0."""
    return f"{value:{spec}}{unit}" if is_number(value) else NOT_AVAILABLE


def page(title: str, body: str) -> str:
    """A complete HTML document: inline CSS, body, then the table-sorting script."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n"
    )


def png_data_uri(data: bytes) -> str:
    """A data: URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_data_uri(figure: Figure) -> str:
    """A data: URI of a matplotlib Figure drawn as PNG (object API, no pyplot)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return png_data_uri(buffer.getvalue())


def image(uri: str, alt: str, caption: str) -> str:
    """A captioned image (<figure> with alt text)."""
    return f'<figure><img src="{uri}" alt="{escape(alt)}">\n<figcaption>{escape(caption)}</figcaption></figure>'


@dataclass(frozen=True)
class KeyFigure:
    """One box of a page's header: label, the figure as text and a short hint (unit, scale)."""

    label: str
    value: str
    hint: str = ""


def key_figures(items: list[KeyFigure]) -> str:
    """The header's row of key figures."""
    boxes = "".join(
        f'<div class="figure-box"><div class="label">{escape(item.label)}</div>'
        f'<div class="value">{escape(item.value)}</div>'
        + (f'<div class="hint">{escape(item.hint)}</div>' if item.hint else "")
        + "</div>"
        for item in items
    )
    return f'<div class="figures">{boxes}</div>'


@dataclass(frozen=True)
class Column:
    """A table column: its header, whether it holds numbers (right-aligned, sorted numerically), a tooltip, and
    whether long text is clipped to one line (the whole text then shows on hover)."""

    title: str
    numeric: bool = False
    tooltip: str = ""
    clip: bool = False


@dataclass(frozen=True)
class Cell:
    """A table cell: its text; sort_key: a number to sort by (None: empty, sorted last); href: a link around the
    text ("" for none); tooltip; flag: highlighted (e.g. an outlier)."""

    text: str
    sort_key: float | None = None
    href: str = ""
    tooltip: str = ""
    flag: bool = False


def number_cell(value, spec: str, unit: str = "", flag: bool = False) -> Cell:
    """A cell of a figure: "n/a" and an empty sort key when missing."""
    return Cell(number_text(value, spec, unit), float(value) if is_number(value) else None, flag=flag)


def _cell(cell: Cell, column: Column) -> str:
    classes = [name for name, on in (("num", column.numeric), ("clip", column.clip), ("flag", cell.flag)) if on]
    attributes = f' class="{" ".join(classes)}"' if classes else ""
    if column.numeric:
        attributes += f' data-sort="{"" if cell.sort_key is None else repr(cell.sort_key)}"'
    tooltip = cell.tooltip or (cell.text if column.clip else "")
    if tooltip:
        attributes += f' title="{escape(tooltip)}"'
    text = escape(cell.text)
    if cell.href:
        text = f'<a href="{escape(cell.href)}">{text}</a>'
    return f"<td{attributes}>{text}</td>"


def _header(column: Column) -> str:
    attributes = ' data-type="number"' if column.numeric else ""
    if column.tooltip:
        attributes += f' title="{escape(column.tooltip)}"'
    return f"<th{attributes}>{escape(column.title)}</th>"


def table(columns: list[Column], rows: list[list[Cell]], sortable: bool = False, table_id: str = "") -> str:
    """An HTML table in a horizontally scrolling wrapper; sortable: click a header to sort by it."""
    head = "".join(_header(column) for column in columns)
    body = "\n".join(
        "<tr>" + "".join(_cell(cell, column) for cell, column in zip(row, columns)) + "</tr>" for row in rows
    )
    attributes = (' class="sortable"' if sortable else "") + (f' id="{escape(table_id)}"' if table_id else "")
    return (
        f'<div class="table-wrap"><table{attributes}>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def definitions(items: dict[str, str]) -> str:
    """A definition list (term: meaning)."""
    entries = "".join(f"<dt>{escape(term)}</dt><dd>{escape(meaning)}</dd>" for term, meaning in items.items())
    return f'<dl class="definitions">{entries}</dl>'


def bullet_list(items: list[str]) -> str:
    """An unordered list of text items."""
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"
