"""Device and precision: one place that turns --device / --dtype into torch objects, and hardware errors
into one line.

    --device auto | cpu | cuda | cuda:N | mps     auto: CUDA if available, then MPS, then CPU
    --dtype  auto | float32 | float16 | bfloat16   auto: float32 on CPU; bfloat16 on CUDA where the GPU
                                                   supports it, else float16; float16 on MPS

The dtype is the dtype the pipeline is loaded in (whatever dtype its weights were saved in) and, for
fine-tuning, the autocast dtype around fp32 master weights (methods/train.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass

import torch

from ..errors import UserError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch.device for --device; one line when the device is not there."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m:
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine (this torch "
                            f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
                            f"use --device cpu or auto")
        i = int(m.group(1) or 0)
        if i >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", i)
    if spec == "mps":
        if not _mps():
            raise UserError("--device mps: Apple's MPS backend is not available on this machine; use --device cpu")
        return torch.device("mps")
    raise UserError(f"unknown --device {spec!r}; use {DEVICES}")


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """The torch dtype for --dtype on `device` (see the module docstring for auto)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if spec not in DTYPES:
        raise UserError(f"unknown --dtype {spec!r}; use auto, float32, float16 or bfloat16")
    return DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a command runs (and, for fine-tuning, whether to checkpoint)."""
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False

    @classmethod
    def resolve(cls, device: str | None = "auto", dtype: str | None = "auto",
                gradient_checkpointing: bool = False) -> "Runtime":
        d = resolve_device(device)
        return cls(d, resolve_dtype(dtype, d), gradient_checkpointing)

    @property
    def half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    def describe(self) -> dict:
        """What the run's numbers depend on. `threads` (torch's CPU intra-op threads when described) and
        `cpu` (the instruction set torch's CPU kernels dispatch to: AVX2, AVX512, ...): CPU kernels split
        their reductions by thread count and vector width, so a gradient step's float sums differ in the last
        bits between them, and over a fine-tuning run that grows into other images (docs/benchmark.md,
        "Reproducible on one CPU kind at one thread count")."""
        return {"device": str(self.device), "dtype": dtype_name(self.dtype),
                "gradient_checkpointing": self.gradient_checkpointing, "threads": torch.get_num_threads(),
                "cpu": torch.backends.cpu.get_cpu_capability()}


OOM_HINT = ("try --dtype float16 or bfloat16, --gradient-checkpointing (fine-tuning methods), or a smaller "
            "--batch-size")


def hardware_error(e: BaseException, what: str = "this command") -> UserError | None:
    """The one-line UserError for an out-of-memory or unsupported-precision error of torch, else None."""
    if isinstance(e, torch.OutOfMemoryError):
        return UserError(f"out of memory while running {what} ({_first(e)}); {OOM_HINT}")
    if isinstance(e, MemoryError):
        return UserError(f"out of memory (RAM) while running {what}; {OOM_HINT}")
    if isinstance(e, RuntimeError):
        msg = _first(e)
        if "can't allocate memory" in msg or "out of memory" in msg.lower():
            return UserError(f"out of memory while running {what} ({msg}); {OOM_HINT}")
        m = re.search(r"not implemented for '(Half|BFloat16)'", msg)
        if m:
            name = {"Half": "float16", "BFloat16": "bfloat16"}[m.group(1)]
            return UserError(f"{name} is not supported by an operation on this device ({msg}); "
                             f"use --dtype float32{' or bfloat16' if name == 'float16' else ''}")
    return None


@contextlib.contextmanager
def hardware_errors(what: str = "this command"):
    """Turn out-of-memory and unsupported-precision errors of torch into one UserError line."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        ue = hardware_error(e, what)
        if ue is None:
            raise
        raise ue from None


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


_CURRENT: contextvars.ContextVar = contextvars.ContextVar("igmu_runtime", default=None)


def current_runtime() -> Runtime:
    """The runtime set by the running command (erase), else CPU float32."""
    return _CURRENT.get() or Runtime()


@contextlib.contextmanager
def using(runtime: Runtime):
    """Within the block, current_runtime() is `runtime` (what the fine-tuning loop reads its precision from)."""
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)
