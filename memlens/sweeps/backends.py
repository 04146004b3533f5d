"""Where a sweep's groups run, and what happens when one fails: the failure model and every
backend (local and Ray), built one way (:func:`make_backend`).

A *backend* is any object with ``run(jobs) -> iterator of GroupResult | GroupFailure``.
:class:`LocalBackend` runs the groups one after another in this process; :class:`RayBackend`
(``backend="ray"``) submits each :class:`~memlens.sweeps.cells.GroupJob` as a Ray task and yields
results as they finish, in any order. Either way the driver (:mod:`memlens.sweeps.run`) stays the
only writer.

Failures are handled once, here, for every backend. A group is tried at most :data:`TRIES` times
(a backend retries with its own mechanism: a loop for the local one, Ray's ``max_retries`` and
``retry_exceptions`` for Ray), except a divergence, which is deterministic and recorded at once. A
group that still fails comes back as a :class:`GroupFailure`: the driver records a row per cell
with ``status: "failed"`` and the error, finishes the other groups, then raises
:class:`SweepFailed` (a ``FloatingPointError`` when every failure diverged).

The Ray backend sizes each task to its group: as many CPUs as memlens's thread policy would give
the group's training step (one below :data:`~memlens.threads.PARALLEL_WORK` activation elements),
and, when the cluster has GPUs, one GPU. A task trains on ``cuda`` when Ray assigned it a GPU and
on the CPU otherwise (:func:`task_device`). Tasks read and write no files. Ray is an optional
dependency: ``pip install 'memlens[ray]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from memlens.bundle import get_bundle
from memlens.sweeps import cells
from memlens.sweeps.cells import GroupJob, GroupResult, run_group
from memlens.threads import PARALLEL_WORK

__all__ = [
    "TRIES",
    "Backend",
    "LocalBackend",
    "RayBackend",
    "RayMissing",
    "BACKENDS",
    "GroupFailure",
    "SweepFailed",
    "attempt",
    "failure_rows",
    "make_backend",
    "require_ray",
    "task_device",
    "task_cpus",
    "group_work",
]

#: how many times a group is tried before its cells are recorded as failed
TRIES = 2
#: the longest error message a failed row keeps
MAX_ERROR_CHARS = 2000


class SweepFailed(RuntimeError):
    """Some groups of a sweep failed :data:`TRIES` times; their cells are recorded as failed."""


@dataclass
class GroupFailure:
    """A group that failed: its job and the error (``"Type: message"``), in place of a result."""

    index: int
    job: GroupJob
    error: str
    kind: str = "RuntimeError"  # the exception's type name

    @classmethod
    def of(cls, job: GroupJob, exc: BaseException) -> GroupFailure:
        """The failure of ``job`` with ``exc`` (its message kept to :data:`MAX_ERROR_CHARS`)."""
        msg = f"{type(exc).__name__}: {exc}"
        if len(msg) > MAX_ERROR_CHARS:
            msg = msg[: MAX_ERROR_CHARS - 3] + "..."
        return cls(job.index, job, msg, type(exc).__name__)


def failure_rows(failure: GroupFailure) -> list[dict]:
    """One row per cell of a failed group: ``status: "failed"`` and the error, no results."""
    return [
        {
            "key": c["key"],
            "cell": c["axes"],
            "T": c["spec"]["T"],
            "seed": c["spec"]["seed"],
            "group": failure.index,
            "instance": i,
            "status": "failed",
            "error": failure.error,
        }
        for i, c in enumerate(failure.job.cells)
    ]


def attempt(job: GroupJob, work: Callable[[GroupJob], GroupResult] = run_group):
    """Run one group: its :class:`GroupResult` (rows stamped ``status: "ok"`` and the device), or
    a :class:`GroupFailure` for a divergence (deterministic: a retry would diverge again). Any
    other exception propagates, for the backend to retry."""
    try:
        res = work(job)
    except FloatingPointError as exc:
        return GroupFailure.of(job, exc)
    for r in res.rows:
        r["status"] = "ok"
        r["device"] = job.device
    return res


@runtime_checkable
class Backend(Protocol):
    """Runs groups somewhere and yields each :class:`GroupResult` (or :class:`GroupFailure`, once
    its retries are spent) as it finishes."""

    def run(self, jobs: Sequence[GroupJob]) -> Iterator[GroupResult | GroupFailure]: ...


class LocalBackend:
    """Run the groups one after another in this process, each tried at most :data:`TRIES` times.
    ``work`` is the function that runs a group (None: :func:`memlens.sweeps.cells.run_group`,
    looked up when the sweep runs; tests inject faults here)."""

    def __init__(self, work: Callable[[GroupJob], GroupResult] | None = None):
        self.work = work

    def run(self, jobs: Sequence[GroupJob]) -> Iterator[GroupResult | GroupFailure]:
        work = self.work if self.work is not None else cells.run_group
        for job in jobs:
            for _ in range(TRIES):
                try:
                    res = attempt(job, work)
                    break
                except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
                    res = GroupFailure.of(job, exc)
            yield res


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


#: backends by name (the CLI's ``--backend``); each is called with the backend options (a Ray
#: backend takes ``address``); a plugin may add its own
BACKENDS: dict[str, Callable[..., Backend]] = {"local": LocalBackend, "ray": RayBackend}


def make_backend(backend: Backend | str | None = None, address: str | None = None) -> Backend:
    """The one way to get a backend: None or ``"local"`` (this process), ``"ray"`` (``address``:
    None starts a local cluster, ``"auto"`` or ``"HOST:PORT"`` joins one; :class:`RayMissing`
    without Ray), another name of :data:`BACKENDS`, or an object with ``run(jobs)``, returned as
    it is. An address with anything but Ray is refused."""
    if address is not None and backend != "ray":
        raise ValueError(
            f"address={address!r} is the Ray cluster to join, so it needs backend 'ray', "
            f"got backend={backend!r}"
        )
    if backend is None:
        return LocalBackend()
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
        return BACKENDS[backend](address=address) if address is not None else BACKENDS[backend]()
    if not callable(getattr(backend, "run", None)):
        raise TypeError(f"backend must have a run(jobs) method, got {backend!r}")
    return backend
