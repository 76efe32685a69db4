"""The evaluation summary: one Markdown table of every aggregate (value, 95% interval, n)."""
from __future__ import annotations

import math


def _fmt(a: dict, pct: bool) -> str:
    if not isinstance(a, dict) or "value" not in a:
        return str(a)
    v, lo, hi, n = a["value"], a["lo"], a["hi"], a["n"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"n/a (n={n})"
    if pct:
        return f"{v:.1%} [{lo:.1%}, {hi:.1%}] (n={n})"
    return f"{v:.4g} [{lo:.4g}, {hi:.4g}] (n={n})"


def md(text) -> str:
    """User text made inert in Markdown (and in HTML rendered from it)."""
    import html
    import re

    return re.sub(r"([\\`*_{}\[\]()#+!|<>~-])", r"\\\1", html.escape(str(text), quote=False))


PCT = ("target_shown", "as_expected", "carrier_kept", "asr", "identical")


def rows(res: dict) -> list[tuple[str, str, str]]:
    """(aspect, metric, formatted value) for every aggregate, in a fixed order."""
    out = []

    def walk(aspect, prefix, d):
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and "value" in v:
                out.append((aspect, name, _fmt(v, any(p in k for p in PCT))))
            elif isinstance(v, dict) and k not in ("settings",):
                walk(aspect, name + ".", v)
    for aspect in res.get("aspects", []):
        walk(aspect, "", {k: v for k, v in res["aggregates"].get(aspect, {}).items() if k != "prompts"})
    for k, v in (res.get("cost") or {}).items():
        out.append(("cost", k, str(v)))
    return out


def summary_markdown(res: dict) -> str:
    head = (f"# igmu evaluation: {md(res['task']['name'])}\n\noriginal: {md(res['original'])}  \nunlearned: "
            f"{md(res['unlearned'])}  \njudge: {md(res['judge']['spec'])}, {res['settings']['images_per_prompt']} images "
            f"per prompt, {res['settings']['steps']} steps, guidance {res['settings']['guidance']}\n\n")
    lines = ["| aspect | metric | value [95% CI] (n) |", "|---|---|---|"]
    lines += [f"| {a} | {m} | {v} |" for a, m, v in rows(res)]
    c = res.get("cache", {})
    tail = (f"\n\nimages generated: {c.get('misses', {}).get('images', 0)}, reused from cache: "
            f"{c.get('hits', {}).get('images', 0)}; {res['seconds']} s\n")
    return head + "\n".join(lines) + tail
