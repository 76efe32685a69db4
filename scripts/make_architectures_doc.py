"""Regenerate the support matrix in docs/architectures.md from the method registry (each eraser's
`architectures` declaration). The text between the two markers is replaced; everything else is kept.

    python scripts/make_architectures_doc.py           # rewrite the block
    python scripts/make_architectures_doc.py --check   # exit 1 if the block is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"


def render(text: str) -> str:
    from igmu.methods.support import BEGIN, END, matrix_markdown

    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no support-matrix markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{matrix_markdown()}\n{END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the block is current")
    a = ap.parse_args()
    text = DOC.read_text()
    new = render(text)
    if a.check:
        if new != text:
            print(f"{DOC} is out of date; run: python scripts/make_architectures_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
