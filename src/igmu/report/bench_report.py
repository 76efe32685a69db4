"""`igmu report DIR`: one self-contained HTML report, a Markdown leaderboard and a CSV from a benchmark folder.

Input (written by `igmu bench`):
    DIR/bench.json                          schema igmu-bench v1: name, config, provenance, cells
    DIR/cells/<id>/results.json             one igmu-results v1 file per finished cell
    DIR/cache/images/<key[:2]>/<key>.png    every generated image, by the key in the results records

Output (in DIR, or --out): report.html (inline CSS, inline SVG plots, images as PNG data URIs, no script,
opens offline), leaderboard.md, leaderboard.csv; each written atomically. A cell without results.json is
shown as missing; a damaged one as unreadable; neither stops the report.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from ..errors import UserError
from ..evaluation.results_schema import check_results
from ..evaluation.summary import md, rows as summary_rows
from ..utils.io import atomic_path, check_writable_dir
from ..utils.validate import MAX_RESULTS_BYTES, parse_json, read_text
from .html import bar_chart, details, esc, html_table, page, png_bytes_data_uri, png_size, radar_chart

SCHEMA = "igmu-bench"
ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness")
RADAR_AXES = ("forgetting", "preservation", "quality", "alignment", "robustness")
SCORE_MAPPING = [
    ("forgetting", "1 − target shown on explicit forget prompts"),
    ("preservation", "share of retain images that show what their prompt asks (as expected)"),
    ("quality", "1 / (1 + FID), FID averaged over the retain and the target-stripped prompts"),
    ("alignment", "1 − max(CSDR / 100, 0) (CSDR in percent)"),
    ("robustness", "1 − mean of (target shown in every robustness group, each attack's ASR)"),
]
GRID_PROMPTS = 4  # per set (forget, retain) and task
_KEY = re.compile(r"^[0-9a-f]{16,128}$")
_CELL_ID = re.compile(r"^[^/\\\x00]+$")


# --- loading -------------------------------------------------------------------------------------

@dataclass
class Cell:
    id: str
    method_label: str
    method: str
    task: str
    seed: object
    set: dict
    status: str  # finished | missing | unreadable
    results: dict | None = None
    problem: str = ""

    @property
    def label(self) -> str:
        return self.method_label


@dataclass
class Bench:
    root: Path
    meta: dict
    cells: list[Cell] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.cells))

    def cells_of(self, task: str) -> list[Cell]:
        return [c for c in self.cells if c.task == task]

    def cpu_runtime(self) -> str:
        """The CPU kernels (instruction set) and thread count the finished cells ran at (results.json runtime).
        Fine-tuning results differ between thread counts and between instruction sets, so a leaderboard says
        whether its cells share one."""
        def setting(c: Cell) -> str:
            rt = _mapping(c.results.get("runtime"))
            t, isa = rt.get("threads"), rt.get("cpu")
            ok = isinstance(t, int) and not isinstance(t, bool) and isinstance(isa, str)
            return f"{_one_line(isa)} x {t} thread(s)" if ok else "not recorded"

        counts = Counter(setting(c) for c in self.cells if c.status == "finished")
        if len(counts) == 1:
            return f"{next(iter(counts))} (all {sum(counts.values())} finished cells)"
        return "mixed: " + ", ".join(f"{k} in {n} cells" for k, n in sorted(counts.items()))


def _mapping(x) -> dict:
    """x when it is a mapping, else {} (fields of results.json and bench.json are read defensively)."""
    return x if isinstance(x, dict) else {}


def _one_line(x) -> str:
    return " ".join(str(x).split())


def load_bench(bench_dir: Path) -> Bench:
    root = Path(bench_dir)
    if not root.exists():
        raise UserError(f"benchmark folder {_one_line(root)} does not exist")
    if not root.is_dir():
        raise UserError(f"{_one_line(root)} is not a folder; give the folder written by igmu bench")
    bj = root / "bench.json"
    if not bj.is_file():
        raise UserError(f"{_one_line(root)} has no bench.json: not an igmu bench folder: run igmu bench first")
    try:
        meta = parse_json(read_text(bj, "file", MAX_RESULTS_BYTES), "it", allow_nan=True)
    except UserError as e:
        raise UserError(f"cannot read {_one_line(bj)}: {e}") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise UserError(f"cannot read {_one_line(bj)}: not an igmu-bench file (schema "
                        f"{_one_line(meta.get('schema') if isinstance(meta, dict) else type(meta).__name__)!r})")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > 1:
        raise UserError(f"cannot read {_one_line(bj)}: schema_version {_one_line(version)!r}; "
                        "this igmu reads version 1, upgrade igmu")
    cells_in = meta.get("cells")
    if not isinstance(cells_in, list) or not all(isinstance(c, dict) for c in cells_in):
        raise UserError(f"cannot read {_one_line(bj)}: 'cells' must be a list of cell records")
    bench = Bench(root, meta)
    for i, c in enumerate(cells_in):
        cid = str(c.get("id", f"cell-{i}"))
        cell = Cell(id=cid, method_label=str(c.get("method_label") or c.get("method") or cid),
                    method=str(c.get("method", "")), task=str(c.get("task", "")), seed=c.get("seed", ""),
                    set=_mapping(c.get("set")), status="missing")
        rp = root / "cells" / cid / "results.json"
        if not _CELL_ID.match(cid) or cid in (".", ".."):
            cell.status, cell.problem = "unreadable", "cell id is not a folder name"
        elif rp.exists():
            try:
                res = check_results(parse_json(read_text(rp, "file", MAX_RESULTS_BYTES), "it", allow_nan=True))
                cell.results, cell.status = res, "finished"
                if not cell.task:
                    cell.task = str((res.get("task") or {}).get("name") or "")
            except (UserError, ValueError) as e:
                cell.status, cell.problem = "unreadable", _one_line(e)
        bench.cells.append(cell)
    if not any(c.status == "finished" for c in bench.cells):
        bad = [c for c in bench.cells if c.status == "unreadable"]
        if bad:
            raise UserError(f"no readable results in {_one_line(root)}: {len(bad)} of its {len(bench.cells)} cells "
                            f"have a malformed results.json (cells/{_one_line(bad[0].id)}: {bad[0].problem})")
        raise UserError(f"no finished cell in {_one_line(root)} (none of its {len(bench.cells)} cells has a "
                        "results.json yet): run igmu bench first, or wait for it")
    return bench


# --- metrics -------------------------------------------------------------------------------------

def _is_agg(x) -> bool:
    return isinstance(x, dict) and "value" in x


def _num(x) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def _get(d, path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


@dataclass
class Metric:
    aspect: str
    label: str
    path: tuple  # inside aggregates (aspect first) or ("cost", key)
    better: str  # lower | higher
    pct: bool = False
    ref: tuple | None = None  # the original model's aggregate, if there is one

    @property
    def key(self) -> str:
        return ".".join(self.path[1:])


def attack_paths(rob) -> dict[str, tuple]:
    """{label: path inside aggregates} of every attack in a robustness aggregate: "robustness.attacks.<name:budget>",
    and the single "robustness.unlearndiffatk" of results written before attacks had budgets."""
    out: dict[str, tuple] = {}
    if not isinstance(rob, dict):
        return out
    if isinstance(rob.get("unlearndiffatk"), dict):
        out["unlearndiffatk"] = ("robustness", "unlearndiffatk")
    for k, v in (rob.get("attacks") or {}).items() if isinstance(rob.get("attacks"), dict) else []:
        if isinstance(v, dict):
            out[str(k)] = ("robustness", "attacks", k)
    return out


def headline_metrics(cells: list[Cell]) -> list[Metric]:
    """The leaderboard columns for one task: the headline metric of every aspect, robustness per group and attack."""
    groups: list[str] = []
    attacks: dict[str, tuple] = {}
    for c in cells:
        g = _get(c.results or {}, ("aggregates", "robustness", "groups"))
        if isinstance(g, dict):
            groups += [k for k in g if k not in groups]
        for k, path in attack_paths(_get(c.results or {}, ("aggregates", "robustness"))).items():
            attacks.setdefault(k, path)
    ms = [Metric("forgetting", "target shown", ("forgetting", "target_shown"), "lower", True,
                 ("forgetting", "target_shown_original")),
          Metric("preservation", "as expected", ("preservation", "as_expected"), "higher", True,
                 ("preservation", "as_expected_original")),
          Metric("preservation", "perceptual distance", ("preservation", "perceptual_distance"), "lower"),
          Metric("quality", "FID retain", ("quality", "retain", "fid"), "lower"),
          Metric("quality", "FID stripped", ("quality", "stripped", "fid"), "lower"),
          Metric("alignment", "CLIP score retain", ("alignment", "clip_score_retain"), "higher", False,
                 ("alignment", "clip_score_retain_original")),
          Metric("alignment", "CSDR", ("alignment", "csdr"), "lower")]
    ms += [Metric("robustness", f"{g} target shown", ("robustness", "groups", g, "target_shown"), "lower", True,
                  ("robustness", "groups", g, "target_shown_original")) for g in groups]
    ms += [Metric("robustness", f"ASR {k}", path + ("asr",), "lower", True) for k, path in attacks.items()]
    ms += [Metric("cost", "erase seconds", ("cost", "erase_seconds"), "lower"),
           Metric("cost", "params changed", ("cost", "params_changed"), "lower")]
    return ms


def metric_value(res: dict | None, path: tuple | None) -> dict | None:
    """{"value","lo","hi","n"} for an aggregate (cost: value only), or None where it is missing."""
    if res is None or path is None:
        return None
    if path[0] == "cost":
        v = _num(_get(res.get("cost") or {}, path[1:]))
        return None if v is None else {"value": v, "lo": None, "hi": None, "n": None}
    a = _get(res.get("aggregates") or {}, path)
    if not _is_agg(a) or _num(a.get("value")) is None:
        return None
    return {"value": _num(a["value"]), "lo": _num(a.get("lo")), "hi": _num(a.get("hi")), "n": a.get("n")}


def radar_scores(res: dict | None) -> list[float | None]:
    """The five aspects scored 0..1, higher is better (SCORE_MAPPING); None where the aspect is missing."""
    def v(*path):
        m = metric_value(res, path)
        return None if m is None else m["value"]

    clip = lambda x: None if x is None else min(max(x, 0.0), 1.0)  # noqa: E731
    f = v("forgetting", "target_shown")
    p = v("preservation", "as_expected")
    fids = [x for x in (v("quality", "retain", "fid"), v("quality", "stripped", "fid")) if x is not None]
    q = 1 / (1 + max(sum(fids) / len(fids), 0.0)) if fids else None
    c = v("alignment", "csdr")
    c = None if c is None else c / 100  # CSDR is in percent
    groups = _get((res or {}).get("aggregates") or {}, ("robustness", "groups"))
    rob = [v("robustness", "groups", g, "target_shown") for g in (groups or {})] + \
        [v(*path, "asr") for path in attack_paths(_get((res or {}).get("aggregates") or {}, ("robustness",))).values()]
    rob = [x for x in rob if x is not None]
    return [clip(None if f is None else 1 - f), clip(p), clip(q), clip(None if c is None else 1 - max(c, 0.0)),
            clip(1 - sum(rob) / len(rob) if rob else None)]


def all_metrics(res: dict) -> list[tuple[str, str, float | None, float | None, float | None, object]]:
    """(aspect, metric, value, lo, hi, n) for every aggregate (the order of summary.rows) and every numeric cost."""
    out = []

    def walk(aspect, prefix, d):
        for k, v in d.items():
            name = f"{prefix}{k}"
            if _is_agg(v):
                out.append((aspect, name, _num(v.get("value")), _num(v.get("lo")), _num(v.get("hi")), v.get("n")))
            elif isinstance(v, dict) and k not in ("settings",):
                walk(aspect, name + ".", v)
    aggs = res.get("aggregates") or {}
    for aspect in res.get("aspects") or list(aggs):
        a = aggs.get(aspect)
        if isinstance(a, dict):
            walk(aspect, "", {k: v for k, v in a.items() if k != "prompts"})
    for k, v in (res.get("cost") or {}).items():
        if _num(v) is not None:
            out.append(("cost", str(k), _num(v), None, None, None))
    return out


# --- formatting ----------------------------------------------------------------------------------

def fmt(v: float | None, pct: bool = False, cost: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{v:.1%}"
    if cost and float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.4g}"


def fmt_ci(m: dict, pct: bool) -> str:
    if m is None or m.get("lo") is None or m.get("hi") is None:
        return ""
    return f"[{fmt(m['lo'], pct)}, {fmt(m['hi'], pct)}]"


def fmt_range(m: dict, pct: bool) -> str:
    """The 95% interval, compact: "12.5–37.5%" or "0.0195–0.0608"."""
    if m is None or m.get("lo") is None or m.get("hi") is None:
        return ""
    if pct:
        return f"{m['lo'] * 100:.1f}–{m['hi'] * 100:.1f}%"
    return f"{m['lo']:.3g}–{m['hi']:.3g}"


def _best(values: list[float | None], better: str) -> float | None:
    """The best value of a column, or None when fewer than two values differ (nothing to single out)."""
    vs = [v for v in values if v is not None]
    if len(set(vs)) < 2:
        return None
    return min(vs) if better == "lower" else max(vs)


def _multi_seed(cells: list[Cell]) -> bool:
    return len({str(c.seed) for c in cells}) > 1


def _row_label(c: Cell, multi: bool) -> str:
    return f"{c.label} (seed {c.seed})" if multi else c.label


# --- HTML ----------------------------------------------------------------------------------------

REPORT_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;background:#f6f7f9;font-size:14px}
main{max-width:1360px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #dde1e7}
h3{font-size:16px;margin:22px 0 8px}h4{font-size:14px;margin:14px 0 6px;color:#444}
.sub{color:#5b6675;margin:0 0 14px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;margin:12px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:6px 0;background:#fff}
td,th{border:1px solid #dde1e7;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#eef1f5;font-weight:600;font-size:12px}
td:first-child,th:first-child{text-align:left}
table.leaderboard td,table.leaderboard th{font-size:12.5px;padding:3px 5px}table.leaderboard td{white-space:nowrap}
table.leaderboard td:first-child{white-space:normal;min-width:90px;max-width:140px;position:sticky;left:0;
background:#fff}
table.leaderboard th:first-child{position:sticky;left:0}
table.leaderboard .v{font-weight:500}table.leaderboard .ci{display:block;color:#6b7583;font-size:11px}
table.leaderboard tr.ref td{background:#f4f6f8;color:#48525f;font-style:italic}
table.leaderboard td.best .v{font-weight:700;color:#0a6b3a}
table.leaderboard tr.missing td{color:#9aa3ae}
th.asp{text-align:center;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#fdecea;color:#a1251b;
font-style:normal}
.badge.ok{background:#e6f4ea;color:#0a6b3a}
table.kv td,table.kv th{font-size:12px}table.kv td{text-align:left}
pre{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px;overflow-x:auto;font-size:12px;
max-height:420px}
details{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:8px 0;padding:6px 12px}
details>summary{cursor:pointer;font-weight:600}
details table td,details table th{font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:10px}
svg.chart,svg.radar{background:#fff;border:1px solid #dde1e7;border-radius:6px}
svg text{font-family:system-ui,sans-serif;fill:#1d2430}
svg .ct{font-size:12px;font-weight:600}svg .cn,svg .tk{font-size:10px;fill:#6b7583}
svg .lb{font-size:11px}svg .vl{font-size:11px;fill:#48525f}
svg .bar{fill:#4c78a8}svg .err{stroke:#1d2430;stroke-width:1.2;fill:none}
svg .ax{stroke:#9aa3ae;stroke-width:1}svg .ref{stroke:#e45756;stroke-width:1.5;stroke-dasharray:4 3}
svg .ring{fill:none;stroke:#dde1e7}svg .area{fill:#4c78a8;fill-opacity:.28;stroke:#4c78a8;stroke-width:1.6}
svg .dot{fill:#4c78a8}
.legend{font-size:12px;color:#5b6675}.legend .refkey{color:#e45756;font-weight:600}
.grids{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
table.img td,table.img th{text-align:center;vertical-align:top;padding:4px}
table.img td.prompt{text-align:left;max-width:170px;font-size:12px;white-space:normal}
table.img img{width:96px;height:96px;border:1px solid #ccd2da;display:block;margin:0 auto;background:#000}
table.img img.px{image-rendering:pixelated}
.flag{font-size:11px;display:block;margin-top:2px}.flag.bad{color:#b3261e;font-weight:600}.flag.good{color:#0a6b3a}
.noimg{width:96px;height:96px;border:1px dashed #ccd2da;display:flex;align-items:center;justify-content:center;
font-size:11px;color:#9aa3ae;margin:0 auto}
ul.toc{columns:2;margin:6px 0}
"""


def _provenance_html(b: Bench) -> str:
    prov = _mapping(b.meta.get("provenance"))
    kv = [("created", prov.get("created")), ("model", prov.get("model")),
          ("model fingerprint", prov.get("model_fingerprint")), ("config sha256", prov.get("config_sha256")),
          ("CPU kernels and threads", b.cpu_runtime()), ("folder", str(b.root))]
    versions = _mapping(prov.get("versions"))
    rows = [f"<th>{esc(k)}</th><td><code>{esc('–' if v is None else v)}</code></td>" for k, v in kv]
    rows += [f"<th>{esc(k)}</th><td><code>{esc(v)}</code></td>" for k, v in versions.items()]
    n_fin = sum(c.status == "finished" for c in b.cells)
    counts = (f"{len(b.cells)} cells: {n_fin} finished"
              + "".join(f", {sum(c.status == s for c in b.cells)} {s}" for s in ("missing", "unreadable")
                        if any(c.status == s for c in b.cells)))
    cfg = json.dumps(b.meta.get("config", {}), indent=2, sort_keys=False, ensure_ascii=False, default=str)
    return (f'<div class="card"><p class="sub">{esc(counts)}; tasks: {esc(", ".join(b.tasks()))}</p>'
            + html_table([], rows, "kv")
            + details("configuration (as resolved by igmu bench)", f"<pre>{esc(cfg)}</pre>") + "</div>")


def _leaderboard_html(b: Bench, task: str) -> str:
    cells = b.cells_of(task)
    fin = [c for c in cells if c.status == "finished"]
    ms = headline_metrics(fin)
    spans: list[tuple[str, int]] = []
    for m in ms:
        if spans and spans[-1][0] == m.aspect:
            spans[-1] = (m.aspect, spans[-1][1] + 1)
        else:
            spans.append((m.aspect, 1))
    h1 = '<th rowspan="2">method</th><th rowspan="2">seed</th>' + "".join(
        f'<th class="asp" colspan="{n}">{esc(a)}</th>' for a, n in spans) + '<th rowspan="2">mean score ↑</th>'
    h2 = "".join(f"<th>{esc(m.label)} {'↓' if m.better == 'lower' else '↑'}</th>" for m in ms)
    vals = {c.id: [metric_value(c.results, m.path) for m in ms] for c in fin}
    best = [_best([vals[c.id][j]["value"] if vals[c.id][j] else None for c in fin], m.better)
            for j, m in enumerate(ms)]

    def td(m: Metric, v: dict | None, is_best=False) -> str:
        if v is None:
            return "<td>–</td>"
        ci = fmt_range(v, m.pct)
        n = "" if v.get("n") is None else f"n={v['n']}"
        extra = "".join(f'<span class="ci">{esc(x)}</span>' for x in (ci, n) if x)
        cls = ' class="best"' if is_best else ""
        return (f'<td{cls}><span class="v">{esc(fmt(v["value"], m.pct, m.aspect == "cost"))}</span>{extra}</td>')

    rows = []
    seen_seeds = []
    for c in fin:  # the original model's reference values, once per seed
        if str(c.seed) in seen_seeds:
            continue
        seen_seeds.append(str(c.seed))
        rows.append('<tr class="ref">' + f"<td>original model (reference)</td><td>{esc(c.seed)}</td>"
                    + "".join(td(m, metric_value(c.results, m.ref)) for m in ms) + "<td>–</td></tr>")
    for c in cells:
        if c.status != "finished":
            why = f' title="{esc(c.problem)}"' if c.problem else ""
            rows.append(f'<tr class="missing"><td>{esc(c.label)} <span class="badge"{why}>'
                        f"{esc(c.status)}</span></td><td>{esc(c.seed)}</td>"
                        + "<td>–</td>" * len(ms) + "<td>–</td></tr>")
            continue
        sc = [s for s in radar_scores(c.results) if s is not None]
        mean = f"{sum(sc) / len(sc):.3f}" if sc else "–"
        rows.append(f"<td>{esc(c.label)}</td><td>{esc(c.seed)}</td>"
                    + "".join(td(m, v, v is not None and best[j] is not None and v["value"] == best[j])
                              for j, (m, v) in enumerate(zip(ms, vals[c.id])))
                    + f'<td><span class="v">{esc(mean)}</span></td>')
    return f'<div class="scroll">{html_table([h1, h2], rows, "leaderboard")}</div>'


def _charts_html(b: Bench, task: str) -> str:
    cells = b.cells_of(task)
    fin = [c for c in cells if c.status == "finished"]
    multi = _multi_seed(cells)
    out = []
    ms = headline_metrics(fin)
    charts = []
    for aspect in ASPECTS + ("cost",):
        for m in (m for m in ms if m.aspect == aspect):
            if m.path == ("cost", "params_changed"):
                continue
            items = []
            for c in fin:
                v = metric_value(c.results, m.path)
                vlh = (None, None, None) if v is None else (v["value"], v["lo"], v["hi"])
                items.append((_row_label(c, multi), *vlh))
            if all(it[1] is None for it in items):
                continue
            ref = metric_value(fin[0].results, m.ref) if fin and not multi else None
            charts.append(bar_chart(f"{aspect}: {m.label}", items, ref=ref["value"] if ref else None, pct=m.pct,
                                    note=f"{'lower' if m.better == 'lower' else 'higher'} is better"
                                         + ("; dashed: original model" if ref else "")))
    if charts:
        out.append(f"<h4>headline metrics per aspect</h4><div class=\"charts\">{''.join(charts)}</div>")
    radars = [radar_chart(_row_label(c, multi), list(RADAR_AXES), radar_scores(c.results)) for c in fin]
    mapping = "".join(f"<li><b>{esc(a)}</b> = {esc(t)}</li>" for a, t in SCORE_MAPPING)
    out.append("<h4>aspect scores per method (0..1, higher is better)</h4>"
               f'<p class="legend">Each axis maps an aspect to 0..1 so that higher is better (clipped to 0..1; '
               f"a missing aspect reads n/a and is drawn at 0); the leaderboard's mean score is their "
               f"unweighted mean over the aspects present:</p><ul class=\"legend\">{mapping}</ul>"
               f'<div class="charts">{"".join(radars)}</div>')
    return "".join(out)


def _image(b: Bench, key) -> str:
    key = str(key or "")
    if not _KEY.match(key):
        return '<div class="noimg">no image</div>'
    p = b.root / "cache" / "images" / key[:2] / f"{key}.png"
    try:
        data = p.read_bytes()
    except OSError:
        return '<div class="noimg">not in cache</div>'
    size = png_size(data)
    if size is None:
        return '<div class="noimg">damaged</div>'
    cls = ' class="px"' if max(size) <= 128 else ""
    return f'<img{cls} src="{png_bytes_data_uri(data)}" alt="" width="96" height="96">'


def _flags(rec: dict | None, set_name: str, role: str) -> str:
    if rec is None:
        return '<span class="flag">–</span>'
    shown = rec.get("target_shown")
    out = ""
    if shown is not None:
        bad = bool(shown) and (set_name == "retain" or role == "unlearned")
        out += (f'<span class="flag {"bad" if bad else "good"}">target {"✓" if shown else "✗"}</span>')
    if "as_expected" in rec and set_name == "retain":
        ok = bool(rec["as_expected"])
        out += f'<span class="flag {"good" if ok else "bad"}">expected {"✓" if ok else "✗"}</span>'
    return out


def _grids_html(b: Bench, task: str) -> str:
    fin = [c for c in b.cells_of(task) if c.status == "finished"]
    multi = _multi_seed(fin)
    if not fin:
        return ""
    by_cell = {}
    originals: dict[tuple, dict] = {}
    for c in fin:
        recs = [r for r in (c.results.get("records") or []) if isinstance(r, dict)]
        by_cell[c.id] = {(r.get("set"), r.get("prompt"), r.get("seed")): r for r in recs
                         if r.get("role") == "unlearned"}
        for r in recs:
            if r.get("role") == "original":
                originals.setdefault((r.get("set"), r.get("prompt"), r.get("seed")), r)
    blocks = []
    for set_name in ("forget", "retain"):
        by_group: dict[str, list[tuple]] = {}
        for k, r in originals.items():
            if k[0] == set_name and (set_name != "forget" or r.get("group") == "explicit"):
                by_group.setdefault(str(r.get("group")), []).append(k)
        picks = []  # round robin over the groups, so that every retain group shows
        while len(picks) < GRID_PROMPTS and any(by_group.values()):
            for g in list(by_group):
                if by_group[g] and len(picks) < GRID_PROMPTS:
                    picks.append(by_group[g].pop(0))
        if not picks:
            continue
        head = ("<th>prompt (seed)</th><th>original</th>"
                + "".join(f"<th>{esc(_row_label(c, multi))}</th>" for c in fin))
        rows = []
        for k in picks:
            o = originals[k]
            tds = [f'<td class="prompt">{esc(k[1])} <span class="sub">({esc(k[2])})</span></td>',
                   f"<td>{_image(b, o.get('key'))}{_flags(o, set_name, 'original')}</td>"]
            for c in fin:
                r = by_cell[c.id].get(k)
                tds.append(f"<td>{_image(b, r.get('key') if r else None)}{_flags(r, set_name, 'unlearned')}</td>")
            rows.append("".join(tds))
        blocks.append(f"<div><h4>{esc(set_name)} prompts</h4>{html_table([head], rows, 'img')}</div>")
    legend = ('<p class="legend">Same prompt and seed for every model. <b>target ✓</b>: the judge finds the erased '
              "target in the image (red where that is a failure); <b>expected ✓</b>: a retain image shows what its "
              "prompt asks.</p>")
    return legend + f'<div class="grids">{"".join(blocks)}</div>'


def _yes(x) -> str:
    return "✓" if x else "✗"


def _adversarial(p: dict) -> str:
    a = p.get("adversarial_prompt")
    return "– (not needed: the plain prompt already shows the target)" if a is None else str(a)


def _attack_html(atk: dict, label: str, row: str) -> str:
    """One attack's per-prompt table (adversarial prompt, success, cost) for one cell."""
    if atk.get("skipped"):
        return f"<p>{esc(row)}: {esc(label)} skipped ({esc(atk['skipped'])})</p>"
    prompts = [p for p in atk.get("prompts") or [] if isinstance(p, dict)]
    ph = ("<th>prompt</th><th>seed</th><th>adversarial prompt</th><th>success</th>"
          "<th>without attack</th><th>iterations</th><th>seconds</th><th>final loss</th>")
    pr = [f"<td>{esc(p.get('prompt', ''))}</td><td>{esc(p.get('seed', ''))}</td>"
          f"<td><code>{esc(_adversarial(p))}</code></td>"
          f"<td>{_yes(p.get('success'))}</td><td>{_yes(p.get('success_no_attack'))}</td>"
          f"<td>{esc(p.get('iterations', ''))}</td><td>{esc(fmt(_num(p.get('seconds'))))}</td>"
          f"<td>{esc(fmt(_num(p.get('final_loss'))))}</td>" for p in prompts]
    settings = json.dumps(atk.get("budget", atk.get("settings", {})), ensure_ascii=False, default=str)
    return (f"<h4>{esc(label)} prompts: {esc(row)}</h4>"
            f'<p class="legend">budget: <code>{esc(settings)}</code></p>'
            + (html_table([ph], pr) if pr else "<p>no prompt attacked</p>"))


def _drill_html(b: Bench, task: str) -> str:
    fin = [c for c in b.cells_of(task) if c.status == "finished"]
    multi = _multi_seed(fin)
    rows_of = {c.id: summary_rows(c.results) for c in fin}
    out = []
    for aspect in ASPECTS + ("cost",):
        names: list[str] = []
        vals: dict[tuple, str] = {}
        for c in fin:
            for a, m, v in rows_of[c.id]:
                if a == aspect:
                    if m not in names:
                        names.append(m)
                    vals[(c.id, m)] = v
        if not names:
            continue
        head = "<th>metric</th>" + "".join(f"<th>{esc(_row_label(c, multi))}</th>" for c in fin)
        body = [f"<td>{esc(m)}</td>" + "".join(f"<td>{esc(vals.get((c.id, m), '–'))}</td>" for c in fin)
                for m in names]
        extra = ""
        if aspect == "robustness":
            for c in fin:
                aggs = c.results.get("aggregates") or {}
                for label, path in attack_paths(_get(aggs, ("robustness",))).items():
                    extra += _attack_html(_get(aggs, path), label, _row_label(c, multi))
        out.append(details(esc(aspect), f'<div class="scroll">{html_table([head], body)}</div>{extra}'))
    # the cells themselves
    head = ("<th>cell</th><th>method</th><th>label</th><th>seed</th><th>overrides</th><th>status</th>"
            "<th>judge</th><th>images/prompt</th><th>seconds</th>")
    body = []
    for c in b.cells_of(task):
        r = c.results or {}
        st = esc(c.status) + (f" ({esc(c.problem)})" if c.problem else "")
        body.append(f"<td><code>{esc(c.id)}</code></td><td>{esc(c.method)}</td><td>{esc(c.label)}</td>"
                    f"<td>{esc(c.seed)}</td>"
                    f"<td><code>{esc(json.dumps(c.set, ensure_ascii=False, default=str))}</code></td>"
                    f"<td>{st}</td><td>{esc(_get(r, ('judge', 'spec')) or '–')}</td>"
                    f"<td>{esc(_get(r, ('settings', 'images_per_prompt')) or '–')}</td>"
                    f"<td>{esc(r.get('seconds', '–'))}</td>")
    out.append(details("cells", f'<div class="scroll">{html_table([head], body)}</div>'))
    return "".join(out)


def _task_header(b: Bench, task: str) -> str:
    fin = [c for c in b.cells_of(task) if c.status == "finished"]
    t = (fin[0].results.get("task") if fin else None) or {}
    cat = _mapping(t.get("category"))
    bits = []
    if t.get("name") and str(t.get("name")) != task:
        bits.append(f"name {t['name']}")
    if cat:
        bits.append("category: " + ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
                                              for k, v in cat.items()))
    if t.get("targets"):
        bits.append("targets: " + ", ".join(map(str, t["targets"])))
    if t.get("anchor"):
        bits.append(f"anchor: {t['anchor']}")
    return f'<p class="sub">{esc("; ".join(bits))}</p>' if bits else ""


def _anchor(i: int) -> str:
    return f"task-{i}"


def _step_cell(x) -> str:
    return fmt(x, pct=True) if isinstance(x, float) else ("–" if x is None else str(x))


def _findings_html(b: Bench) -> str:
    items = "".join(f"<li>{esc(x)}</li>" for x in findings_lines(compute_findings(b)))
    return ('<div class="card"><h2>Findings</h2><p class="legend">generated from this run\'s results (the IGMU '
            f"paper's two findings, counted here)</p><ul>{items}</ul></div>")


def render_html(b: Bench) -> str:
    tasks = b.tasks()
    body = [f"<main><h1>igmu benchmark: {esc(b.name)}</h1>",
            '<p class="sub">EvalIGMU results of every (method, task, seed) cell: five aspects with 95% '
            "bootstrap intervals, the original model as reference, generated images and every aggregate.</p>",
            _provenance_html(b), _findings_html(b)]
    if len(tasks) > 1:
        body.append('<ul class="toc">' + "".join(f'<li><a href="#{_anchor(i)}">{esc(t)}</a></li>'
                                                 for i, t in enumerate(tasks)) + "</ul>")
    for i, t in enumerate(tasks):
        body.append(f'<section id="{_anchor(i)}"><h2>Task: {esc(t)}</h2>{_task_header(b, t)}')
        body.append("<h3>Leaderboard</h3>"
                    '<p class="legend">value, 95% interval and n; ↓ lower is better, ↑ higher is better; best '
                    "method per column in green; – : not measured or not finished. The first row is the original "
                    "model (before unlearning) for reference.</p>" + _leaderboard_html(b, t))
        head, rows = seed_spread(b.cells_of(t))
        if rows:
            body.append("<h3>Seed-to-seed spread</h3>" + '<p class="legend">over the seeds of each method: mean ± '
                        "standard deviation (min–max)</p>" + html_table(["".join(f"<th>{esc(h)}</th>" for h in head)],
                                                                       ["".join(f"<td>{esc(x)}</td>" for x in r)
                                                                        for r in rows]))
        head, rows = step_rows(b.cells_of(t))
        if rows:
            body.append("<h3>After each step</h3>" + '<p class="legend">the chained erasure scored after every step '
                        "on every target (shown: share of explicit forget images in which the judge finds it)</p>"
                        + html_table(["".join(f"<th>{esc(h)}</th>" for h in head)],
                                     ["".join(f"<td>{esc(_step_cell(x))}</td>" for x in r) for r in rows]))
        if any(c.status == "finished" for c in b.cells_of(t)):
            body.append("<h3>Plots</h3>" + _charts_html(b, t))
            body.append("<h3>Images: original vs unlearned</h3>" + _grids_html(b, t))
            body.append("<h3>Details per aspect</h3>" + _drill_html(b, t))
        body.append("</section>")
    body.append('<p class="legend">written by igmu report; self-contained (no network needed).</p></main>')
    return page(f"igmu benchmark: {b.name}", "".join(body), css=REPORT_CSS, h1=False)


# --- findings and sequential steps (generated from the results, never hand-written) ------------------
# The report's generated sections: the findings of a run and the scores of sequential tasks after every step.
#
# Findings restate the IGMU paper's two findings on a run's own results, and say which aspects separate its
# methods; every number is computed here from the cells' results.json, none is written by hand:
#
# - preservation: how many methods fall below RETAIN_BAR retain, a method's retain being the mean over its
#   finished cells of preservation.as_expected (the share of retain images that show what their prompt asks);
#   the paper's first finding (most methods fail at preservation) is reproduced when more than half do;
# - robustness: how many methods exceed ASR_BAR attack success, a method's ASR being the mean over its cells
#   of the highest success rate among the cell's attacks; the second finding (most methods fail at
#   robustness) is reproduced when more than half of the methods with an attack do;
# - separation: per aspect, how many pairs of methods (same task and seed) have 95% intervals of the aspect's
#   headline metric that do not overlap, and the spread of the methods' mean aspect scores (best - worst).

RETAIN_BAR = 0.80
ASR_BAR = 0.50
HEADLINE = {"forgetting": ("forgetting", "target_shown"), "preservation": ("preservation", "as_expected"),
            "quality": ("quality", "retain", "fid"), "alignment": ("alignment", "csdr")}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _intervals(c, aspect: str) -> dict:
    """{metric label: {"value","lo","hi"}} of a cell's headline metric(s) of one aspect (robustness: each
    attack's ASR)."""

    if aspect == "robustness":
        paths = {k: p + ("asr",) for k, p in attack_paths(_get(c.results.get("aggregates") or {},
                                                                ("robustness",))).items()}
    else:
        paths = {aspect: HEADLINE[aspect]}
    out = {}
    for k, p in paths.items():
        m = metric_value(c.results, p)
        if m is not None and m["lo"] is not None and m["hi"] is not None:
            out[k] = m
    return out


def compute_findings(b) -> dict:

    fin = [c for c in b.cells if c.status == "finished"]
    methods: dict[str, list] = {}
    for c in fin:
        methods.setdefault(c.label, []).append(c)

    def v(c, path):
        m = metric_value(c.results, path)
        return None if m is None else m["value"]

    retain = {m: _mean([v(c, HEADLINE["preservation"]) for c in cs]) for m, cs in methods.items()}
    retain = {m: x for m, x in retain.items() if x is not None}
    original = _mean([v(c, ("preservation", "as_expected_original")) for c in fin])
    asr = {}
    for m, cs in methods.items():
        per_cell = []
        for c in cs:
            paths = attack_paths(_get(c.results.get("aggregates") or {}, ("robustness",))).values()
            vals = [v(c, p + ("asr",)) for p in paths]
            vals = [x for x in vals if x is not None]
            per_cell.append(max(vals) if vals else None)
        if _mean(per_cell) is not None:
            asr[m] = _mean(per_cell)
    scores = {m: [_mean([radar_scores(c.results)[i] for c in cs]) for i in range(len(ASPECTS))]
              for m, cs in methods.items()}
    separation = []
    for i, aspect in enumerate(ASPECTS):
        pairs = separated = 0
        groups: dict[tuple, list] = {}
        for c in fin:
            groups.setdefault((c.task, str(c.seed)), []).append(c)
        for cs in groups.values():
            for a, b2 in combinations(cs, 2):
                ia, ib = _intervals(a, aspect), _intervals(b2, aspect)
                for k in set(ia) & set(ib):
                    pairs += 1
                    separated += ia[k]["hi"] < ib[k]["lo"] or ib[k]["hi"] < ia[k]["lo"]
        sc = [s[i] for s in scores.values() if s[i] is not None]
        separation.append({"aspect": aspect, "pairs": pairs, "separated": separated,
                           "share": separated / pairs if pairs else None,
                           "score_spread": max(sc) - min(sc) if len(sc) > 1 else None})
    separation.sort(key=lambda r: (r["share"] is None, -(r["share"] or 0), -(r["score_spread"] or 0)))
    return {"methods": len(methods), "retain": retain, "original_retain": original,
            "below_retain": sorted((m for m, x in retain.items() if x < RETAIN_BAR), key=lambda m: retain[m]),
            "asr": asr, "above_asr": sorted((m for m, x in asr.items() if x > ASR_BAR), key=lambda m: -asr[m]),
            "separation": separation}


def _verdict(k: int, n: int) -> str:
    return "reproduced on this run" if n and k * 2 > n else "not reproduced on this run"


def findings_lines(f: dict) -> list[str]:
    """The findings as plain sentences (Markdown list items without the dash; callers escape them)."""
    out = []
    r, a = f["retain"], f["asr"]
    if r:
        names = ", ".join(f"{m} {r[m]:.0%}" for m in f["below_retain"]) or "none"
        ref = "" if f["original_retain"] is None else f"; the original model: {f['original_retain']:.0%}"
        out.append(f"Preservation: {len(f['below_retain'])} of {len(r)} methods fall below {RETAIN_BAR:.0%} retain "
                   f"(mean share of retain images shown as asked, over their cells{ref}): {names}. The paper's first "
                   f"finding, that most methods fail at preservation, is {_verdict(len(f['below_retain']), len(r))}.")
    else:
        out.append("Preservation: not measured on this run (no cell has a retain rate).")
    if a:
        names = ", ".join(f"{m} {a[m]:.0%}" for m in f["above_asr"]) or "none"
        out.append(f"Robustness: {len(f['above_asr'])} of {len(a)} methods exceed {ASR_BAR:.0%} attack success "
                   f"(mean over their cells of the highest attack success rate): {names}. The paper's second "
                   f"finding, that most methods fail at robustness, is {_verdict(len(f['above_asr']), len(a))}.")
    else:
        out.append("Robustness: no attack ran on this run.")
    sep = [s for s in f["separation"] if s["pairs"]]
    if sep:
        parts = [f"{s['aspect']} {s['separated']} of {s['pairs']} ({s['share']:.0%})" for s in sep]
        out.append("Aspects that separate the methods (pairs of methods on the same task and seed whose 95% "
                   "intervals of the aspect's headline metric do not overlap): " + "; ".join(parts) + ".")
    spread = [s for s in f["separation"] if s["score_spread"] is not None]
    if spread:
        out.append("Spread of the methods' mean aspect scores (best − worst, 0..1): " +
                   "; ".join(f"{s['aspect']} {s['score_spread']:.2f}" for s in
                             sorted(spread, key=lambda s: -s["score_spread"])) + ".")
    return out


def step_rows(cells) -> tuple[list[str], list[list]]:
    """The scores of chained (sequential) cells after every step: (header, rows) with, per step, each target's
    share shown and the retain rate; empty when no cell has steps."""

    fin = [c for c in cells if c.status == "finished" and isinstance(c.results.get("steps"), list)]
    if not fin:
        return [], []
    targets = list(dict.fromkeys(t for c in fin for s in c.results["steps"] for t in s.get("erased", [])))
    head = ["method", "seed", "step", "erased"] + [f"{t} shown" for t in targets] + ["retain as expected"]
    rows = []
    for c in fin:
        for s in c.results["steps"]:
            aggs = s.get("aggregates") or {}
            per = _get(aggs, ("forgetting", "per_target")) or {}
            rows.append([c.label, c.seed, s.get("step"), " + ".join(s.get("erased", []))]
                        + [_get(per, (t, "value")) for t in targets]
                        + [_get(aggs, ("preservation", "as_expected", "value"))])
    return head, rows


SPREAD_METRICS = [("forgetting: target shown", ("forgetting", "target_shown"), True),
                  ("preservation: as expected", ("preservation", "as_expected"), True),
                  ("quality: FID retain", ("quality", "retain", "fid"), False),
                  ("alignment: CSDR", ("alignment", "csdr"), False)]


def seed_spread(cells) -> tuple[list[str], list[list[str]]]:
    """Seed-to-seed spread of one task's methods run with several seeds: per method and headline metric (and
    each attack's ASR), the mean, the standard deviation over seeds (n - 1) and the range; empty when no
    method has two seeds."""
    fin = [c for c in cells if c.status == "finished"]
    by: dict[str, list] = {}
    for c in fin:
        by.setdefault(c.label, []).append(c)
    by = {m: cs for m, cs in by.items() if len({str(c.seed) for c in cs}) > 1}
    if not by:
        return [], []
    attacks: dict[str, tuple] = {}
    for cs in by.values():
        for c in cs:
            for k, p in attack_paths(_get(c.results.get("aggregates") or {}, ("robustness",))).items():
                attacks.setdefault(k, p + ("asr",))
    metrics = SPREAD_METRICS + [(f"robustness: ASR {k}", p, True) for k, p in attacks.items()]
    head = ["method", "seeds"] + [m for m, _, _ in metrics]
    rows = []
    for m, cs in by.items():
        row = [m, str(len(cs))]
        for _, path, pct in metrics:
            vals = [x["value"] for x in (metric_value(c.results, path) for c in cs) if x is not None]
            if len(vals) < 2:
                row.append("–")
                continue
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
            row.append(f"{fmt(mu, pct)} ± {fmt(sd, pct)} ({fmt(min(vals), pct)}–{fmt(max(vals), pct)})")
        rows.append(row)
    return head, rows


# --- Markdown and CSV ----------------------------------------------------------------------------

def render_markdown(b: Bench) -> str:
    prov = _mapping(b.meta.get("provenance"))
    lines = [f"# igmu benchmark: {md(b.name)}", ""]
    for k in ("created", "model", "model_fingerprint", "config_sha256"):
        if prov.get(k) is not None:
            lines.append(f"- {md(k.replace('_', ' '))}: {md(prov[k])}")
    lines.append(f"- CPU kernels and threads: {md(b.cpu_runtime())}")
    lines.append("")
    lines.append("Value [95% interval] (n); ↓ lower is better, ↑ higher is better; "
                 "– : not measured or not finished. "
                 "Mean score: unweighted mean of the aspect scores in 0..1 (" +
                 "; ".join(f"{a} = {md(t)}" for a, t in SCORE_MAPPING) + ").")
    lines += ["", "## Findings", "", "Generated from this run's results (the IGMU paper's two findings, counted "
              "here):", ""] + [f"- {md(x)}" for x in findings_lines(compute_findings(b))]
    for task in b.tasks():
        cells = b.cells_of(task)
        fin = [c for c in cells if c.status == "finished"]
        ms = headline_metrics(fin)
        multi = _multi_seed(cells)
        lines += ["", f"## {md(task)}", ""]
        head = ["method", "seed"] + [md(f"{m.aspect}: {m.label}") + (" ↓" if m.better == "lower" else " ↑")
                                     for m in ms]
        head.append("mean score ↑")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))

        def cellmd(m, v):
            if v is None:
                return "–"
            ci = fmt_ci(v, m.pct)
            n = "" if v.get("n") is None else f" (n={md(v['n'])})"
            return md(fmt(v["value"], m.pct, m.aspect == "cost")) + (f" {md(ci)}" if ci else "") + n

        seen = []
        for c in fin:
            if str(c.seed) in seen:
                continue
            seen.append(str(c.seed))
            lines.append("| " + " | ".join(["original model (reference)", md(c.seed)]
                                           + [cellmd(m, metric_value(c.results, m.ref)) for m in ms] + ["–"]) + " |")
        for c in cells:
            if c.status != "finished":
                lines.append("| " + " | ".join([f"{md(_row_label(c, multi))} ({c.status})", md(c.seed)]
                                               + ["–"] * (len(ms) + 1)) + " |")
                continue
            sc = [s for s in radar_scores(c.results) if s is not None]
            lines.append("| " + " | ".join([md(_row_label(c, multi)), md(c.seed)]
                                           + [cellmd(m, metric_value(c.results, m.path)) for m in ms]
                                           + [f"{sum(sc) / len(sc):.3f}" if sc else "–"]) + " |")
        head, rows = seed_spread(cells)
        if rows:
            lines += ["", "Seed-to-seed spread (mean ± standard deviation over the seeds, min–max):", "",
                      "| " + " | ".join(md(h) for h in head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(md(x) for x in r) + " |" for r in rows]
        head, rows = step_rows(cells)
        if rows:
            lines += ["", "After each step (share of explicit forget images showing each target; retain rate):", "",
                      "| " + " | ".join(md(h) for h in head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(md(_step_cell(x)) for x in r) + " |" for r in rows]
        missing = [c for c in cells if c.status != "finished"]
        if missing:
            lines += ["", "Not finished: " + ", ".join(f"{md(c.id)} ({c.status})" for c in missing)]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["task", "method_label", "seed", "aspect", "metric", "value", "lo", "hi", "n", "cell_id"]


def csv_rows(b: Bench) -> list[list]:
    out = []
    for c in b.cells:
        if c.status != "finished":
            continue
        for aspect, metric, v, lo, hi, n in all_metrics(c.results):
            out.append([c.task, c.label, c.seed, aspect, metric, _csv_num(v), _csv_num(lo), _csv_num(hi),
                        "" if n is None else n, c.id])
    return out


def _csv_num(x):
    return "" if x is None else repr(float(x))


# --- entry point ---------------------------------------------------------------------------------

def write_report(bench_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Write report.html, leaderboard.md and leaderboard.csv (atomically) into `out` (default: bench_dir).

    Returns {"html": path, "md": path, "csv": path}. UserError (one line) for a missing folder, a folder without
    bench.json, an unreadable bench.json, no finished cell, or an output folder that cannot be written."""
    bench = load_bench(Path(bench_dir))
    out = check_writable_dir(Path(out) if out is not None else Path(bench_dir))
    paths = {"html": out / "report.html", "md": out / "leaderboard.md", "csv": out / "leaderboard.csv"}
    html_text, md_text, rows = render_html(bench), render_markdown(bench), csv_rows(bench)
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
        _readable(tmp)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(md_text, encoding="utf-8")
        _readable(tmp)
    with atomic_path(paths["csv"]) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            w.writerows(rows)
        _readable(tmp)
    return paths


def _readable(path: Path) -> None:
    """A report is for sharing: the usual file mode (the temp file is created 0600)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
