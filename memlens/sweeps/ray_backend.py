"""The Ray backend's old home: everything now lives in :mod:`memlens.sweeps.backends`, built with
:func:`~memlens.sweeps.backends.make_backend`. Kept so that old imports keep working."""

from memlens.sweeps.backends import (
    LOCAL_OBJECT_STORE,
    RayBackend,
    RayMissing,
    group_work,
    make_backend,
    require_ray,
    task_cpus,
    task_device,
)

#: the CLI's old entry point (``backend("ray", address)``): :func:`make_backend`
backend = make_backend

__all__ = [
    "LOCAL_OBJECT_STORE",
    "RayBackend",
    "RayMissing",
    "backend",
    "group_work",
    "require_ray",
    "task_cpus",
    "task_device",
]
