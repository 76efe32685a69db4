from __future__ import annotations

import string
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "world" / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"


def load_world_tokenizer():
    """The mini world's CLIPTokenizer (built by `igmu world build-tokenizer`)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def build_t5_tokenizer(clip_tokenizer, max_length: int = 32):
    """A T5-format tokenizer (T5TokenizerFast: SentencePiece-style Unigram, "▁" word marks, "</s>" appended,
    pad 0 / eos 1 / unk 2 as T5's) over the whole words of a CLIP tokenizer's vocabulary, built offline.

    Hand-built because T5's real tokenizer (spiece.model) comes from the hub: a `tokenizers` Unigram model
    whose pieces are "▁word" for every word of the CLIP vocabulary (log-prob -5), "▁" (-8) and single
    characters (-10), so known words are one token and any text still tokenizes. Lower-cased, as the mini
    world's captions are."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w[:-4] for w in clip_tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha()
                    and w[:-4].islower()})
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation + "".join(words)))
    pieces, seen = [], set()
    for piece, score in [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)] + \
            [("▁" + w, -5.0) for w in words] + [(c, -10.0) for c in chars]:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                           model_max_length=max_length)
