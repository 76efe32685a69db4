from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "world" / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"


def load_world_tokenizer():
    """The mini world's CLIPTokenizer (built by `igmu world build-tokenizer`)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
