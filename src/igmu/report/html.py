"""Self-contained HTML pieces: images inline as base64 PNG, every user string escaped."""
from __future__ import annotations

import base64
import html
import io

import numpy as np

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px}.cell{width:104px;font-size:10px;text-align:center}
.cell img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ddd}.bad{color:#b00}"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def png_data_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table(header: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{esc(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def grid(imgs, captions, flags=None) -> str:
    cells = []
    for k, (im, cap) in enumerate(zip(imgs, captions)):
        cls = ' class="bad"' if flags is not None and not flags[k] else ""
        cells.append(f'<div class="cell"><img src="{png_data_uri(im)}" alt="{esc(cap)}"><div{cls}>{esc(cap)}</div></div>')
    return f'<div class="grid">{"".join(cells)}</div>'


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")
