"""Atomic file and folder writes: nothing half-written is ever left under the final name."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.
    A folder at `final` is never replaced by a file."""
    final = Path(final)
    if final.is_dir():
        from ..errors import UserError

        raise UserError(f"output path {final} is a folder, not a file; choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary folder beside `final`; swap it in only if the block succeeds.

    An existing folder at `final` is replaced: callers decide first whether it may be (check_out).
    An existing file there is never turned into a folder."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        from ..errors import UserError

        raise UserError(f"output path {final} is a file, not a folder; choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finite_json(obj):
    """`obj` with every NaN or infinite float replaced by None (null): JSON has no NaN or Infinity, and strict
    readers refuse them. Iterative over lists and dicts."""
    import math

    def fix(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    root = [obj]
    stack = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        x = parent[key]
        if isinstance(x, dict):
            x = parent[key] = dict(x)
            stack.extend((x, k) for k in x)
        elif isinstance(x, (list, tuple)):
            x = parent[key] = list(x)
            stack.extend((x, i) for i in range(len(x)))
        else:
            parent[key] = fix(x)
    return root[0]


def dumps_json(obj, **kw) -> str:
    """json.dumps of finite_json(obj): never NaN or Infinity in a file igmu writes."""
    return json.dumps(finite_json(obj), allow_nan=False, **kw)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj, indent=2, sort_keys=True) + "\n")


def check_out(out: str | os.PathLike, ours, what: str, overwrite: bool = True, flag: str = "--out") -> Path:
    """The rule every command follows before writing its output folder `out` (then written with atomic_dir):

    - a file at `out` is refused (it is never turned into a folder);
    - an existing non-empty folder that igmu did not write (`ours(out)` is false) is refused, always;
    - an existing folder igmu wrote is replaced only when `overwrite` (commands whose reruns replace their own
      output pass True; `export` passes the user's --overwrite);
    - the folder's parent must be writable.
    `what` names what igmu writes there, e.g. "igmu artifact"."""
    from ..errors import UserError

    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"{flag} {out} is a file; give a folder path that does not exist yet")
        if any(out.iterdir()):
            if not ours(out):
                raise UserError(f"{flag} {out} is a non-empty folder that is not an {what}; igmu never deletes "
                                "it: choose a new folder")
            if not overwrite:
                raise UserError(f"{flag} {out} already holds an {what}; pass --overwrite to replace it, "
                                "or choose a new folder")
    check_writable_dir(out if out.is_dir() else out.parent)
    return out


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and make sure files can be written there, else UserError."""
    from ..errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {path} ({e.strerror}); choose a writable --out") from None
    return path


def read_mapping(path, what: str, kind: str = "YAML") -> dict:
    """A YAML (or JSON) file holding a mapping, through the validation layer (validate.load_mapping)."""
    from .validate import load_mapping

    return load_mapping(path, what, kind)
