"""Token bookkeeping shared by methods that act on a concept's tokens."""
from __future__ import annotations


def token_positions(ids: list[int], sub: list[int]) -> list[int]:
    """Positions in `ids` covered by every occurrence of the token sequence `sub`."""
    out = []
    for i in range(len(ids) - len(sub) + 1):
        if sub and ids[i:i + len(sub)] == sub:
            out += range(i, i + len(sub))
    return out
