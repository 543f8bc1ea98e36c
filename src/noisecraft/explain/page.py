"""The explain page itself: figures and sections assembled into one self-contained HTML file
(inline PNG, no JavaScript, nothing fetched)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import viz


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    note: str = ""


def fig(image: Any, caption: str) -> Figure:
    """A figure from an image array (``viz``'s charts and grids) and its caption (HTML)."""
    return Figure(viz.png_bytes(image), caption)


def render_html(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The page: a heading, an introduction, and each section with its figures and captions."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
             "line-height:1.45}figure{display:inline-block;margin:0.6em;vertical-align:top;"
             "max-width:480px}figcaption{font-size:0.9em;color:#333}img{image-rendering:pixelated;"
             "max-width:100%}h2{border-bottom:1px solid #ccc}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:0.9em}</style>",
             "</head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{intro}</p>", "<nav><ul>"]
    parts += [f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections]
    parts.append("</ul></nav>")
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.note:
            parts.append(f"<p>{s.note}</p>")
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(s.title)}" src="data:image/png;base64,'
                         f'{data}"><figcaption>{f.caption}</figcaption></figure>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
