"""Versions of igmu and the libraries that define its numbers (recorded in artifacts and results)."""
from __future__ import annotations


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    from .. import __version__
    return {"igmu": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}
