"""The real CLIP BPE tokenizer (Stable Diffusion 1.x / 2.x), built offline from the vocabulary that the
open-clip-torch wheel ships (open_clip/bpe_simple_vocab_16e6.txt.gz).

open_clip cannot be imported here (it imports torchvision at import time), so the file is located with
importlib.util.find_spec, never imported: install the wheel without its dependencies,
    pip install --no-deps open-clip-torch==3.3.0        (the Makefile's install step does)
The vocabulary is rebuilt exactly as CLIP's simple_tokenizer.py does (the 256 byte symbols, the same
with the end-of-word mark, one token per BPE merge of the first 48,894 merges, then <|startoftext|>
and <|endoftext|>: 49,408 tokens), written as vocab.json + merges.txt, and loaded as a transformers
CLIPTokenizer: what SD 1.x ("openai/clip-vit-large-patch14") and SD 2.x (OpenCLIP ViT-H/14, which pads
with "!") use. tests/test_scale.py checks token ids that real SD gives.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # CLIP's simple_tokenizer.py: merges[1:49152-256-2+1]


def bpe_vocab_path() -> Path:
    """Where open-clip-torch's BPE vocabulary file is (the package is located, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            p = Path(d) / VOCAB_FILE
            if p.is_file():
                return p
    raise UserError("the real CLIP tokenizer is built from the vocabulary file of the open-clip-torch wheel; "
                    "install it without its dependencies: pip install --no-deps open-clip-torch==3.3.0")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer_files(out: Path) -> Path:
    """vocab.json and merges.txt of CLIP's tokenizer, from the open-clip-torch vocabulary file."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out


def clip_tokenizer(pad: str = "<|endoftext|>", where: Path | None = None):
    """A transformers CLIPTokenizer with CLIP's real vocabulary: pad "<|endoftext|>" (SD 1.x) or "!" (SD 2.x)."""
    from transformers import CLIPTokenizer

    folder = _files() if where is None else write_tokenizer_files(where)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<|endoftext|>",
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token=pad,
                         model_max_length=77)


@lru_cache(maxsize=1)
def _files() -> Path:
    import tempfile

    return write_tokenizer_files(Path(tempfile.mkdtemp(prefix="igmu-clip-bpe-")))
