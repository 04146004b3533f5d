"""memlens on a CUDA device: the same code path as on the CPU, checked against it, and timed.

    python benchmarks/gpu_check.py [--ray]

1. The bottleneck smoke sweep (every cell, its probes) on ``cuda`` and on the CPU: the tables
   agree cell for cell (test loss within float tolerance) and both wall times are printed.
2. One bottleneck ``cpu``-preset training run (32 instances, T = 1000) timed on each device.
3. ``memlens.temper`` (step size "auto") of a small memorising model on each device: λ̂ agrees
   within its standard errors, both times printed.
4. With ``--ray``: the smoke sweep through the Ray backend on a local cluster that sees the GPU,
   compared with the local CPU table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import memlens
from memlens.registry import get_bundle


def table(rows):
    return {(r["T"], r["seed"]): r["test_loss"] for r in rows}


def compare(a, b) -> float:
    assert a.keys() == b.keys(), "different cells"
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a)


def sweep(device, out, backend=None):
    t0 = time.perf_counter()
    rows = memlens.sweep("bottleneck", preset="smoke", out=out, device=device,
                         backend=backend, progress=False)  # fmt: skip
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--gpu", default="cuda", help="the device to compare with the CPU")
    args = ap.parse_args()
    gpu = args.gpu
    if gpu == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    tmp = Path(tempfile.mkdtemp())
    cpu_rows, cpu_s = sweep("cpu", tmp / "cpu")
    gpu_rows, gpu_s = sweep(gpu, tmp / "gpu")
    err = compare(table(gpu_rows), table(cpu_rows))
    print(f"smoke sweep ({len(cpu_rows)} cells): cpu {cpu_s:.1f} s, {gpu} {gpu_s:.1f} s; "
          f"max relative test-loss difference {err:.2e}")  # fmt: skip

    b = get_bundle("bottleneck")
    p = b.preset("cpu")
    spec = {**p["task"], "T": 1000, "seed": 0}
    for device in ("cpu", gpu):
        model = b.build(spec).expand(32).to(device)
        tr, _ = b.data(spec)
        x = tr.inputs.expand(-1, 32, -1).contiguous().to(device)
        steps = 200
        memlens.train(model, x, steps=5, lr=1e-2, progress=False)  # warm-up (and compile)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        memlens.train(model, x, steps=steps, lr=1e-2, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / steps * 1e3
        print(
            f"bottleneck cpu-preset step, 32 instances x T=1000 (n=1000, m=2): {device} "
            f"{ms:.2f} ms/step"
        )

    mspec = {**get_bundle("mlp").preset("story")["task"], "T": 16, "seed": 0}
    mb = get_bundle("mlp")
    model = mb.build(mspec)
    tr, _ = mb.data(mspec)
    memlens.train(model, tr, steps=1500, lr=1e-2, l1=0.1, progress=False)
    res = {}
    for device in ("cpu", gpu):
        t0 = time.perf_counter()
        r = memlens.temper(model.to(device), tr.to(device), [1.0, 10.0], chains=4, draws=200,
                           localization=100.0, progress=False, seed=0)  # fmt: skip
        res[device] = (r, time.perf_counter() - t0)
        print(
            f"temper (2 temperatures x 4 chains x 200 draws, auto step): {device} "
            f"{res[device][1]:.1f} s; λ̂ {r.llc.mean[:, 0].tolist()} ± {r.llc.se[:, 0].tolist()}"
        )
    model.to("cpu")

    if args.ray:
        from memlens.sweeps.ray_backend import RayBackend

        ray_rows, ray_s = sweep(gpu, tmp / "ray", backend=RayBackend())
        err = compare(table(ray_rows), table(cpu_rows))
        devices = sorted({r.get("device", "?") for r in ray_rows})
        print(
            f"smoke sweep through Ray on the GPU machine: {ray_s:.1f} s, devices {devices}, "
            f"max relative test-loss difference vs cpu {err:.2e}"
        )


if __name__ == "__main__":
    main()
