"""How many CPU threads torch uses, set deliberately.

torch's intra-op thread pool spins while it waits; when more threads run than there are cores (several
processes, each with the default of one thread per core), every one of them slows down many times over
(measured in docs/performance.md). igmu therefore sets the count itself: every command takes --threads,
default `default_threads()`, and a bench gives each of its parallel cells an equal share of the cores.
"""
from __future__ import annotations

import os

from ..errors import UserError


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads(parallel: int = 1) -> int:
    """The thread count of one of `parallel` jobs sharing this machine: OMP_NUM_THREADS when the user set it,
    else the available cores divided by the parallel jobs (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, available_cores() // max(1, parallel))


def check_threads(threads: int | None) -> int | None:
    if threads is not None and not 1 <= threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024, got {threads}")
    return threads


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, or to default_threads() when None. Returns the count."""
    import torch

    n = check_threads(threads) or default_threads()
    torch.set_num_threads(n)
    return n


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that give a child process `threads` threads (OpenMP and MKL read them at start)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
