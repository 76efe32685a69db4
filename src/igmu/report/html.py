"""Self-contained HTML pieces: images inline as base64 PNG, plots as inline SVG, every user string escaped.

Nothing here loads anything from the network: a page written with `page` opens offline, and its
Content-Security-Policy forbids every fetch except inline styles and data: images.
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px}.cell{width:104px;font-size:10px;text-align:center}
.cell img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ddd}.bad{color:#b00}"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def png_data_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return png_bytes_data_uri(buf.getvalue())


def png_bytes_data_uri(data: bytes) -> str:
    """A PNG file's bytes as a data: URI (no decoding, the file exactly)."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None if `data` is no PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def table(header: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{esc(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def html_table(header_rows: list[str], rows: list[str], cls: str = "") -> str:
    """A table from rows already rendered as HTML: each row its `<th>`/`<td>` cells, or a whole `<tr ...>...</tr>`
    (to give it a class); the caller escapes."""
    c = f' class="{esc(cls)}"' if cls else ""

    def tr(r):
        return r if r.startswith("<tr") else f"<tr>{r}</tr>"
    head = "".join(tr(r) for r in header_rows)
    body = "".join(tr(r) for r in rows)
    return f"<table{c}><thead>{head}</thead><tbody>{body}</tbody></table>"


def details(summary_html: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary_html}</summary>{body}</details>"


def grid(imgs, captions, flags=None) -> str:
    cells = []
    for k, (im, cap) in enumerate(zip(imgs, captions)):
        cls = ' class="bad"' if flags is not None and not flags[k] else ""
        cells.append(f'<div class="cell"><img src="{png_data_uri(im)}" alt="{esc(cap)}"><div{cls}>{esc(cap)}</div></div>')
    return f'<div class="grid">{"".join(cells)}</div>'


def page(title: str, body: str, css: str | None = None, h1: bool = True) -> str:
    """A whole HTML document: `css` replaces the default style sheet; h1=False leaves the heading to `body`."""
    head = f"<h1>{esc(title)}</h1>" if h1 else ""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{CSS if css is None else css}</style></head><body>{head}{body}</body></html>")


# --- inline SVG plots --------------------------------------------------------------------------

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(s: str, n: int) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n - 1] + "\u2026"


def _num(v: float, pct: bool) -> str:
    if not _finite(v):
        return "n/a"
    return f"{v:.0%}" if pct and abs(v) >= 0.1 else (f"{v:.1%}" if pct else f"{v:.3g}")


def bar_chart(title: str, items: list[tuple[str, float | None, float | None, float | None]],
              ref: float | None = None, pct: bool = False, note: str = "", width: int = 360) -> str:
    """Horizontal bars, one per (label, value, lo, hi), the interval [lo, hi] as an error bar;
    `ref` (the original model's value) as a dashed line. pct: values are shares, drawn on 0..100%."""
    row, top, left, right = 22, 34, 118, 62
    h = top + row * max(len(items), 1) + 24
    x0, x1 = left, width - right
    pts = [v for it in items for v in it[1:] if _finite(v)] + ([ref] if _finite(ref) else [])
    if pct:
        lo_d, hi_d = min([0.0] + pts), max([1.0] + pts)
    else:
        lo_d, hi_d = min([0.0] + pts), max([0.0] + pts)
        if hi_d - lo_d <= 0:
            hi_d = lo_d + 1.0
        pad = 0.05 * (hi_d - lo_d)
        hi_d, lo_d = (hi_d + pad if hi_d > 0 else hi_d), (lo_d - pad if lo_d < 0 else lo_d)

    def X(v):
        return x0 + (x1 - x0) * (v - lo_d) / (hi_d - lo_d)

    out = [f'<svg class="chart" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" role="img" aria-label="{esc(title)}">',
           f'<text x="4" y="14" class="ct">{esc(_short(title, 52))}</text>']
    if note:
        out.append(f'<text x="4" y="27" class="cn">{esc(note)}</text>')
    zx = X(0.0)
    base = top + row * max(len(items), 1)
    out.append(f'<line x1="{zx:.1f}" y1="{top - 4}" x2="{zx:.1f}" y2="{base}" class="ax"/>')
    for v in ((lo_d, hi_d) if not pct else (0.0, 1.0)):
        out.append(f'<text x="{X(v):.1f}" y="{base + 14}" class="tk" text-anchor="middle">{esc(_num(v, pct))}</text>')
    for i, (label, v, lo, hi) in enumerate(items):
        y = top + row * i
        out.append(f'<text x="{left - 6}" y="{y + 14}" class="lb" text-anchor="end"><title>{esc(label)}</title>'
                   f'{esc(_short(label, 16))}</text>')
        if _finite(v):
            a, b = sorted((zx, X(v)))
            out.append(f'<rect x="{a:.1f}" y="{y + 4}" width="{max(b - a, 0.8):.1f}" height="{row - 8}" class="bar">'
                       f'<title>{esc(label)}: {esc(_num(v, pct))}</title></rect>')
            if _finite(lo) and _finite(hi):
                la, lb = X(lo), X(hi)
                ym = y + row / 2
                out.append(f'<path d="M{la:.1f} {ym:.1f}H{lb:.1f}M{la:.1f} {ym - 4:.1f}V{ym + 4:.1f}'
                           f'M{lb:.1f} {ym - 4:.1f}V{ym + 4:.1f}" class="err"/>')
        out.append(f'<text x="{x1 + 6}" y="{y + 14}" class="vl">{esc(_num(v, pct))}</text>')
    if _finite(ref):
        rx = X(ref)
        out.append(f'<line x1="{rx:.1f}" y1="{top - 4}" x2="{rx:.1f}" y2="{base}" class="ref">'
                   f'<title>original model: {esc(_num(ref, pct))}</title></line>')
    if not items:
        out.append(f'<text x="{x0}" y="{top + 14}" class="cn">no finished cell</text>')
    out.append("</svg>")
    return "".join(out)


def radar_chart(title: str, axes: list[str], scores: list[float | None], size: int = 250) -> str:
    """Scores in 0..1 (higher is better) on equally spaced axes; a missing score sits at 0 and reads n/a."""
    w, h = size + 100, size + 6
    cx, cy, r = w / 2, size / 2 + 16, size / 2 - 42
    n = len(axes)

    def P(k, s):
        a = -math.pi / 2 + 2 * math.pi * k / n
        return cx + r * s * math.cos(a), cy + r * s * math.sin(a)

    out = [f'<svg class="radar" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}">',
           f'<text x="{cx:.1f}" y="16" class="ct" text-anchor="middle"><title>{esc(title)}</title>'
           f'{esc(_short(title, 36))}</text>']
    for ring in (0.25, 0.5, 0.75, 1.0):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (P(k, ring) for k in range(n)))
        out.append(f'<polygon points="{pts}" class="ring"/>')
    for k, name in enumerate(axes):
        x, y = P(k, 1.0)
        out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}" class="ax"/>')
        lx, ly = P(k, 1.14)
        anchor = "middle" if abs(lx - cx) < 8 else ("start" if lx > cx else "end")
        ly = ly - 8 if ly < cy - 8 else (ly + 8 if abs(lx - cx) < 8 else ly)
        s = scores[k]
        val = f"{s:.2f}" if _finite(s) else "n/a"
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" class="lb" text-anchor="{anchor}">{esc(name)}'
                   f'<tspan x="{lx:.1f}" dy="12" class="vl">{esc(val)}</tspan></text>')
    clamp = [min(max(s, 0.0), 1.0) if _finite(s) else 0.0 for s in scores]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (P(k, s) for k, s in enumerate(clamp)))
    out.append(f'<polygon points="{pts}" class="area"/>')
    for k, s in enumerate(clamp):
        x, y = P(k, s)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" class="dot"/>')
    out.append("</svg>")
    return "".join(out)
