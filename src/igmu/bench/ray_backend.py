"""The Ray backend: every cell is a Ray task declaring the CPUs/GPUs it needs (config `resources`), so a sweep
spreads over a cluster unchanged. Workers must see the bench folder (a shared filesystem on a real cluster).

--address: an existing cluster ("auto", "HOST:PORT" or "ray://HOST:PORT"); without it a local Ray instance
is started with this machine's CPUs.
"""
from __future__ import annotations

import os

from ..errors import UserError

CONNECT_TIMEOUT_S = 20


def _check_address(address: str) -> None:
    """Fail fast, in one line, when a HOST:PORT address does not answer (Ray itself would retry for minutes)."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"the Ray cluster at {address} does not answer ({e.strerror or e}); start it with "
                        "`ray start --head` or check the address") from None


def check_ray(address: str | None) -> None:
    """Before anything is written: ray is installed and the cluster address (if any) answers."""
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("the Ray backend needs ray; pip install 'igmu[ray]' (ray==2.60.0)") from None
    if address:
        _check_address(address)


def run_ray(run_cell, cells: list[dict], bench_dir: str, cfg_dict: dict, resources, address: str | None,
            tracker) -> None:
    """Run `run_cell` (runner.run_cell) on every cell as Ray tasks."""
    check_ray(address)
    import ray

    env = {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(resources.cpus))), "TRANSFORMERS_VERBOSITY": "error",
                        "DIFFUSERS_VERBOSITY": "error", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}}
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # without --address: always a fresh local instance ("local"), never a cluster already running here
            ray.init(address=address or "local", runtime_env=env, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": os.cpu_count()}))
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise UserError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=1)(run_cell)
        pending = {task.remote(c, bench_dir, cfg_dict): c for c in cells}
        res = ray.cluster_resources()
        per = [(resources.cpus, res.get("CPU", 1))] + ([(resources.gpus, res.get("GPU", 0))] if resources.gpus else [])
        tracker.slots = max(1, int(min(have // need for need, have in per)))
        tracker.queued(len(pending))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                c = pending.pop(ref)
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    if isinstance(cause, UserError):
                        raise UserError(str(cause)) from None
                    raise
                tracker.finished(c, info, len(pending))
    finally:
        if started_here:
            ray.shutdown()
