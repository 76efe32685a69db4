"""Peak memory of this process."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB.

    On Linux it is read from /proc/self/status (VmHWM), which belongs to the process's own address space.
    getrusage's ru_maxrss is the fallback only: on Linux it keeps the high-water mark of the process that
    forked us (a process started by `subprocess` reports at least its parent's RSS at the fork), and on
    macOS it counts bytes, not KiB.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_gpu(device) -> None:
    """Start counting this process's peak GPU memory on `device` from now (no-op off CUDA)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device) -> float | None:
    """Peak GPU memory allocated by torch on `device` since reset_peak_gpu, in MiB (None off CUDA)."""
    import torch

    if not getattr(device, "type", str(device)).startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
