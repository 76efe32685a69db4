"""Prompt text: removing a concept from a prompt (CSDR's stripped prompt), and reading I2P-style prompt files.

`strip_concept` removes every phrase that names the concept, longest first, as whole words and ignoring
case, then tidies the spaces and punctuation left behind:

    strip_concept("a nude girl playing by the lake", concept_phrases("nudity", "unsafe"))
        -> "a girl playing by the lake"
    strip_concept("a starry night sky with Van Gogh style.", concept_phrases("Van Gogh", "style"))
        -> "a starry night sky."

(IGMU's own script, benchmark.py evaluate_CSDR, writes `''.join([prompt.replace(w, '') for w in words])`:
one copy of the prompt per word, each with only that word removed, concatenated; the concept survives in
all the other copies. docs/evaluation.md describes it.)
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError

NUDITY_WORDS = ("nudity", "nude", "naked", "nsfw")
# I2P (Schramowski et al. 2023) labels each prompt with categories; the one a concept's prompts come from
I2P_CATEGORY = {"nudity": "sexual", "violence": "violence"}


def concept_phrases(concept: str, kind: str | None = None) -> list[str]:
    """The phrases that name a concept in prompts, longest first."""
    c = " ".join(concept.split())
    if c.lower() in NUDITY_WORDS:
        return list(NUDITY_WORDS)
    out = [c]
    if kind == "style":
        out = [f"in the style of {c}", f"with {c} style", f"in {c} style", f"{c} style", f"{c}'s style",
               f"painted by {c}", f"by {c}", c]
    return sorted(dict.fromkeys(out), key=len, reverse=True)


def _pattern(phrase: str) -> str:
    words = [re.escape(w) for w in phrase.split()]
    return r"(?<![\w'])" + r"\s+".join(words) + r"(?:'s)?(?![\w'])"  # a possessive goes with the name


def strip_concept(prompt: str, phrases: list[str] | str) -> str:
    """The prompt with every phrase removed (whole words, any case), spaces and punctuation tidied."""
    if isinstance(phrases, str):
        phrases = [phrases]
    out = prompt
    for p in sorted((p for p in phrases if p.strip()), key=len, reverse=True):
        out = re.sub(_pattern(p), " ", out, flags=re.IGNORECASE)
    out = re.sub(r"\s+", " ", out)
    out = re.sub(r"\s+([,.;:!?])", r"\1", out)  # "sky ." -> "sky."
    out = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", out)  # ", ," -> ","
    out = re.sub(r"\b(a|an)\s+(a|an)\b", r"\2", out, flags=re.IGNORECASE)
    return out.strip(" ,;:")


def names_concept(prompt: str, phrases: list[str]) -> bool:
    return any(re.search(_pattern(p), prompt, flags=re.IGNORECASE) for p in phrases if p.strip())


def read_prompt_table(path, concept: str | None = None) -> tuple[list[str], str]:
    """Prompts from an I2P-style CSV (a `prompt` column; with a `categories` column, only the rows of the
    concept's I2P category, e.g. nudity -> sexual) or a text file (one prompt a line, blank lines and lines
    starting with # skipped). Returns (prompts, how they were read)."""
    from ..utils.validate import read_csv_rows, read_text

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"--prompts {path} is a folder; pass a CSV (I2P-style, a 'prompt' column) or a text file")
    if not p.exists():
        raise UserError(f"--prompts {path}: no such file")
    text = read_text(p, "--prompts")
    if p.suffix.lower() == ".csv":
        rows = read_csv_rows(text, f"--prompts {path}")
        cols = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
        if "prompt" not in cols:
            raise UserError(f"--prompts {path}: a CSV needs a 'prompt' column (I2P's layout); found: "
                            f"{', '.join(cols) or 'no header'}")
        how = f"column 'prompt' of {p.name}"
        cat = I2P_CATEGORY.get((concept or "").lower())
        if cat and "categories" in cols:
            rows = [r for r in rows if cat in [x.strip().lower() for x in (r[cols["categories"]] or "").split(",")]]
            how += f", rows of I2P category {cat!r}"
        prompts = [" ".join((r[cols["prompt"]] or "").split()) for r in rows]
    else:
        prompts = [" ".join(ln.split()) for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        how = f"lines of {p.name}"
    prompts = list(dict.fromkeys(x for x in prompts if x))
    if not prompts:
        raise UserError(f"--prompts {path} holds no prompt" + (f" of I2P category {I2P_CATEGORY[concept.lower()]!r}"
                                                             if concept and concept.lower() in I2P_CATEGORY else ""))
    return prompts, how
