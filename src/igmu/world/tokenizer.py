"""Build a CLIP-format BPE tokenizer (vocab.json + merges.txt) for the mini world.

Byte-level BPE exactly as CLIP's tokenizer applies it: words are lower-cased,
mapped to byte-unicode symbols, the last symbol carries '</w>'. Merges are learnt
by the standard BPE procedure (most frequent pair first) on the world's caption
corpus, until every word in it is one token. Any text stays encodable: unknown
words fall back to sub-words and, at worst, single bytes.
"""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np

from ..models.clip_tokenizer import bytes_to_unicode  # CLIP's byte -> unicode map, shared with the real tokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_PAT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""".replace(r"\p{L}", "a-zA-Z\u00c0-\u024f").replace(r"\p{N}", "0-9"))


def _symbols(word: str, b2u: dict[int, str]) -> tuple[str, ...]:
    chars = [b2u[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def learn_bpe(texts: list[str], max_merges: int = 4000):
    b2u = bytes_to_unicode()
    counts = collections.Counter(w for t in texts for w in _PAT.findall(t.lower()))
    words = {_symbols(w, b2u): c for w, c in counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs = collections.Counter()
        for sym, c in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # deterministic tie-break
        merges.append(best)
        new = {}
        for sym, c in words.items():
            out, i = [], 0
            while i < len(sym):
                if i < len(sym) - 1 and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    vocab_list = list(b2u.values()) + [v + "</w>" for v in b2u.values()]
    vocab_list += ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    return vocab, merges


def build_tokenizer(out_dir: Path, seed: int = 0, model_max_length: int = 32):
    """Write a CLIPTokenizer folder; returns the loaded tokenizer."""
    from transformers import CLIPTokenizer

    from .captions import corpus
    from .vocab import EN, IMPLICIT_MARK, TEMPLATE_WORDS, TR

    texts = corpus(np.random.default_rng(seed), 3000)
    # make sure every listed word is in the corpus, however rare
    flat = list(TEMPLATE_WORDS) + IMPLICIT_MARK
    for group in EN.values():
        for v in (group.values() if isinstance(group, dict) else [group]):
            flat += v if isinstance(v, list) else [v]
    for t in TR.values():
        for v in t.values():
            if isinstance(v, dict):
                flat += list(v.values())
            elif isinstance(v, list):
                flat += v
            else:
                flat.append(v)
    texts += flat * 5
    vocab, merges = learn_bpe(texts)
    from ..utils.io import atomic_dir

    with atomic_dir(Path(out_dir)) as tmp:  # written whole, or not at all
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                        encoding="utf-8")
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges],
                            model_max_length=model_max_length, pad_token=EOS)
        tok.save_pretrained(str(tmp))
    return tok
