"""The support matrix, method x architecture, generated from each eraser's `architectures` declaration
(docs/architectures.md embeds it; tests/test_architectures.py checks the copy is current).

A cell is "yes" (the method runs on that family; tests/test_architectures.py erases with it on a tiny
pipeline of the family, tests/test_methods*.py on SD1/SD2), "no" with the method's one-line reason (what
`igmu erase` prints), or "not yet" (no port; `igmu erase` says so in one line)."""
from __future__ import annotations

from . import REGISTRY

# matrix column -> adapter family (SD 1.x and 2.x share one adapter; the tiny "sd1" / "sd2" pipelines test both)
COLUMNS = {"SD1": "sd", "SD2": "sd", "SDXL": "sdxl", "SD3": "sd3", "FLUX": "flux"}
BEGIN, END = "<!-- support-matrix:begin (generated: python scripts/make_architectures_doc.py) -->", \
    "<!-- support-matrix:end -->"


def cell(name: str, family: str) -> tuple[str, str | None]:
    """("yes" | "no" | "not yet", reason or None) of one method on one family."""
    arch = REGISTRY[name].architectures
    if family not in arch:
        return "not yet", None
    return ("yes", None) if arch[family] is None else ("no", arch[family])


def supported(family: str) -> list[str]:
    """Names of the methods that run on a family."""
    return [n for n in sorted(REGISTRY) if cell(n, family)[0] == "yes"]


def matrix_markdown() -> str:
    """The matrix as Markdown: a table (refusals numbered) and the numbered reasons."""
    reasons: list[str] = []
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name in sorted(REGISTRY):
        row = []
        for fam in COLUMNS.values():
            state, why = cell(name, fam)
            if state == "no":
                if why not in reasons:
                    reasons.append(why)
                state = f"no [{reasons.index(why) + 1}]"
            row.append(state)
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"{i}. {why}" for i, why in enumerate(reasons, 1)]
    counts = {col: len(supported(fam)) for col, fam in COLUMNS.items()}
    lines += ["", "Methods that run: " + ", ".join(f"{col} {n}" for col, n in counts.items())
              + f" (of {len(REGISTRY)})."]
    return "\n".join(lines)
