"""``report/index.html``: every section folder of a report (``*/section.json`` with its figures and
tables, from `report`, `noisylm theory` or anything that writes one) on one self-contained page, the
images embedded, so it reads offline and can be mailed alone."""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from pathlib import Path
from typing import Any

from noisylm.artifacts import atomic_write_text, read_json


def write_index(report_dir: str | os.PathLike) -> Path:
    """(Re)build ``index.html`` from every ``report_dir/*/section.json`` (figures embedded, offline)."""
    report_dir = Path(report_dir)
    sections = []
    for path in sorted(report_dir.glob("*/section.json")):
        spec = read_json(path, "report section")
        sections.append((spec.get("order", 1000), path.parent.name, spec))
    sections.sort(key=lambda s: (s[0], s[1]))
    title = "noisylm report"
    sweep_json = report_dir.parent / "sweep.json"
    if sweep_json.is_file():
        title += f": sweep {read_json(sweep_json, 'sweep config').get('name', '')}"
    body = [f"<h1>{html.escape(title)}</h1>", "<nav><ul>"]
    for _, name, spec in sections:
        body.append(f'<li><a href="#{html.escape(name)}">{html.escape(spec.get("title", name))}</a></li>')
    body.append("</ul></nav>")
    for _, name, spec in sections:
        body.append(f'<section id="{html.escape(name)}"><h2>{html.escape(spec.get("title", name))}</h2>')
        for item in spec.get("items", []):
            body.append(_render_item(report_dir / name, item))
        body.append("</section>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    atomic_write_text(report_dir / "index.html", page)
    return report_dir / "index.html"


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "figure{margin:1em 0}img{max-width:100%}figcaption,p.caption{color:#555;font-size:.9em}"
    "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}section{border-top:1px solid #ddd;margin-top:2em}"
)


def _render_item(folder: Path, item: dict[str, Any]) -> str:
    kind = item.get("type")
    caption = html.escape(item.get("caption", ""))
    if kind == "text":
        return f"<p>{html.escape(item.get('text', ''))}</p>"
    path = folder / item.get("path", "")
    if not path.is_file():
        return f"<p><em>missing: {html.escape(str(path.name))}</em></p>"
    if kind == "figure":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
        image = f'<img src="data:{mime};base64,{data}" alt="{caption}">'
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"
    if kind == "table":
        return f'<p class="caption">{caption}</p>' + _table_html(path)
    return f"<p><em>unknown item type {html.escape(str(kind))}</em></p>"


def _table_html(path: Path) -> str:
    text = path.read_text("utf-8")
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
    else:  # a Markdown pipe table (other Markdown is shown as is)
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
        if not rows:
            return f"<pre>{html.escape(text)}</pre>"
    if not rows:
        return "<p><em>empty table</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
