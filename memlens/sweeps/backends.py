"""Run a sweep's packed groups as tasks of a Ray cluster (``memlens.sweep(..., backend="ray")``).

Each packed group is one Ray task running :func:`~memlens.sweeps.cells.run_group`. Its resource
request is sized to the group: as many CPUs as memlens's thread policy would give the group's
training step (one below :data:`~memlens.threads.PARALLEL_WORK` activation elements), and, when
the cluster has GPUs, one GPU. A task trains on ``cuda`` when Ray assigned it a GPU and on the CPU
otherwise (:func:`task_device`; the same code path either way). Results stream back with
``ray.wait`` as tasks finish, in any order, and the driver (which holds the sweep folder's lock)
writes each one as it comes; tasks read and write no files.

Failures: a task that raises, or whose worker dies, is retried by Ray itself (``max_retries`` and
``retry_exceptions``) so that it runs at most :data:`~memlens.sweeps.run.TRIES` times; a
divergence is recorded at once (it is deterministic). A group that still fails comes back as a
:class:`~memlens.sweeps.run.GroupFailure`, which the driver records as failed rows, the same as
for the local backend.

Ray is an optional dependency: ``pip install 'memlens[ray]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from memlens.sweeps.cells import GroupJob, GroupResult, run_group
from memlens.sweeps.run import TRIES, GroupFailure, attempt
from memlens.threads import PARALLEL_WORK

__all__ = [
    "RayBackend",
    "RayMissing",
    "backend",
    "require_ray",
    "task_device",
    "task_cpus",
    "group_work",
]

INSTALL = "pip install 'memlens[ray]'"
#: the object store of a local cluster the backend starts (results are small: one packed model)
LOCAL_OBJECT_STORE = 256 * 1024**2
_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9._\-\[\]:]+:(\d{1,5})$")


class RayMissing(ImportError, ValueError):
    """``backend="ray"`` without Ray installed (an ``ImportError``, and a ``ValueError`` so that
    the CLI prints its one line)."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayMissing` saying what to install."""
    try:
        import ray
    except ImportError:
        raise RayMissing(
            f"backend='ray' needs Ray, which is not installed here: {INSTALL}"
        ) from None
    return ray


def _check_address(address: Any) -> str | None:
    if address is None:
        return None
    if not isinstance(address, str) or not (address == "auto" or _HOST_PORT.match(address)):
        raise ValueError(
            f"address must be None (start a local Ray cluster), 'auto' (the cluster this machine "
            f"joined with `ray start`) or 'HOST:PORT', got {address!r}"
        )
    if address != "auto" and not 0 < int(_HOST_PORT.match(address).group(2)) < 65536:
        raise ValueError(f"address {address!r}: the port must be in 1..65535")
    return address


def task_device(gpu_ids: Sequence) -> str:
    """The device of a group's task: ``cuda`` when Ray assigned it a GPU (``ray.get_gpu_ids()``;
    Ray restricts ``CUDA_VISIBLE_DEVICES`` to it, so it is ``cuda:0`` inside the task), else
    ``cpu``."""
    return "cuda" if len(gpu_ids) > 0 else "cpu"


_widths: dict[str, int] = {}


def group_work(job: GroupJob) -> int:
    """Activation elements one training step of the group touches: rows (the largest T, or the
    batch size) x instances (its cells) x the model's width, the measure the thread policy uses."""
    from memlens.bundle import get_bundle

    spec = job.cells[0]["spec"]
    shape = json.dumps(
        [job.model, {k: v for k, v in spec.items() if k not in ("T", "seed")}],
        sort_keys=True,
        default=str,
    )
    if shape not in _widths:
        _widths[shape] = int(get_bundle(job.model).build(spec).width)
    T = max(int(c["spec"]["T"]) for c in job.cells)
    bs = job.cells[0]["train"].get("batch_size")
    rows = T if bs is None else min(int(bs), T)
    return rows * len(job.cells) * _widths[shape]


def task_cpus(work: int, cap: int) -> int:
    """CPUs to request for a task whose step touches ``work`` elements: one below
    :data:`~memlens.threads.PARALLEL_WORK` (more threads cost more than they save), else one more
    per ``PARALLEL_WORK``, at most ``cap`` (the largest node's CPUs)."""
    if work < PARALLEL_WORK:
        return 1
    return int(max(1, min(cap, 1 + work // PARALLEL_WORK)))


def _task(job: GroupJob, cpus: int, work: Callable[[GroupJob], GroupResult]):
    """One group, inside a Ray worker: on the task's device, with its CPUs' worth of threads."""
    import ray
    import torch

    os.environ["MEMLENS_THREADS"] = str(cpus)  # the thread policy's explicit override
    before = torch.get_num_threads()
    torch.set_num_threads(cpus)
    try:
        dev = task_device(ray.get_gpu_ids())
        return attempt(dataclasses.replace(job, device=dev, progress=False), work)
    finally:
        torch.set_num_threads(before)


def _cause(exc: BaseException) -> BaseException:
    """The task's own exception inside a ``RayTaskError`` (else the Ray error itself)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayBackend:
    """Run each packed group as one Ray task and yield results as they finish.

    Args:
        address: None starts a local cluster for the sweep (and stops it after); ``"auto"`` joins
            the cluster this machine is part of (``ray start --head`` / ``ray start --address``);
            ``"HOST:PORT"`` joins the cluster whose head listens there. If Ray is already
            initialised in this process, that connection is used and left open.
        num_cpus: the CPUs of a local cluster the backend starts (None: all of this machine's).
        gpus: GPUs per task: None gives each task one GPU when the cluster has any (else none);
            0 keeps every group on the CPU; a fraction packs several groups on one GPU.
        max_cpus_per_task: the most CPUs one task asks for (None: the largest node's).
        work: the function a task runs on its :class:`GroupJob` (:func:`run_group`; tests inject
            faults here; it must pickle).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        gpus: float | None = None,
        max_cpus_per_task: int | None = None,
        work: Callable[[GroupJob], GroupResult] = run_group,
    ):
        self.address = _check_address(address)
        for name, v in (("num_cpus", num_cpus), ("max_cpus_per_task", max_cpus_per_task)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
        if gpus is not None and (
            isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus
        ):
            raise ValueError(f"gpus must be None or a number >= 0 (GPUs per task), got {gpus!r}")
        if num_cpus is not None and self.address is not None:
            raise ValueError(
                f"num_cpus={num_cpus} sizes a local cluster; a joined cluster "
                f"(address={self.address!r}) has its own"
            )
        self.num_cpus, self.gpus, self.max_cpus_per_task = num_cpus, gpus, max_cpus_per_task
        self.work = work
        self.ray = require_ray()

    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        ray = self.ray
        if ray.is_initialized():
            yield
            return
        kw: dict[str, Any] = {"include_dashboard": False}
        if self.address is None:
            kw.update(num_cpus=self.num_cpus, object_store_memory=LOCAL_OBJECT_STORE)
        ray.init(address=self.address, **kw)
        try:
            yield
        finally:
            ray.shutdown()  # stops the local cluster we started; only disconnects from a joined one

    def _resources(self, jobs: Sequence[GroupJob]) -> tuple[int, float]:
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cap = max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=1) or 1
        if self.max_cpus_per_task is not None:
            cap = min(cap, self.max_cpus_per_task)
        have_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = self.gpus if self.gpus is not None else (1 if have_gpus else 0)
        if any(j.device.startswith("cuda") for j in jobs) and (gpus == 0 or not have_gpus):
            raise ValueError(
                f"device='cuda' with the Ray backend needs GPUs in the cluster and gpus > 0 "
                f"(cluster GPUs: {have_gpus:g}, gpus per task: {gpus!r}); with the Ray backend a "
                "group runs on cuda whenever its task gets a GPU, so device can stay 'cpu'"
            )
        return cap, gpus

    def run(self, jobs: Sequence[GroupJob]) -> Iterator[GroupResult | GroupFailure]:
        """Submit every group, then yield each result (or failure) as its task finishes."""
        if not jobs:
            return
        ray = self.ray
        with self._connected():
            cap, gpus = self._resources(jobs)
            remote = ray.remote(_task)
            pending = {}
            try:
                for job in jobs:
                    cpus = 1 if gpus else task_cpus(group_work(job), cap)
                    ref = remote.options(
                        num_cpus=cpus,
                        num_gpus=gpus,
                        max_retries=TRIES - 1,
                        retry_exceptions=True,
                        name=f"memlens {job.model} group {job.index}",
                    ).remote(job, cpus, self.work)
                    pending[ref] = job
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            res = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            res = GroupFailure.of(job, _cause(exc))
                        yield res
            finally:
                for ref in pending:  # the driver stopped early: do not leave work running
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)


def backend(name: str, address: str | None = None) -> RayBackend:
    """The backend the CLI's ``--backend NAME [--address A]`` asks for, when it names Ray or an
    address: a :class:`RayBackend`, or a ``ValueError`` (an address needs ``--backend ray``;
    :class:`RayMissing` without Ray)."""
    if name != "ray":
        raise ValueError(
            f"address={address!r} is the Ray cluster to join, so it needs backend 'ray', "
            f"got backend={name!r}"
        )
    return RayBackend(address=address)
