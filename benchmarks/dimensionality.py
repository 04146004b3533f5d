"""Benchmark: data dimensionality and D* (leverage scores) through the m × m Gram matrix, against a
naive implementation that materialises the T × T matrix, plus the DimensionalityProbe's hook
overhead.

    python benchmarks/dimensionality.py            # full sizes (T = 1e4 naive, T = 1e6 ours)
    MEMLENS_FAST=1 python benchmarks/dimensionality.py

Prints a small table: median of several repeats, and the ratio naive / ours.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

import memlens as ml
from probes.dimensionality import (
    DimensionalityProbe,
    data_dimensionality,
    max_data_dimensionality,
)
from toy_models import Bottleneck

FAST = os.environ.get("MEMLENS_FAST") == "1"


def naive_data_dim(H: torch.Tensor) -> torch.Tensor:
    """D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)² with the T × T matrix of dot products (per instance)."""
    Hn = H / H.norm(dim=-1, keepdim=True)
    G = Hn @ H.transpose(-1, -2)  # [inst, T, T]
    return H.norm(dim=-1) ** 2 / (G**2).sum(-1)


def naive_max_data_dim(H: torch.Tensor) -> torch.Tensor:
    """D*_i = diag(H (HᵀH)⁺ Hᵀ): the hat matrix, T × T, per instance."""
    P = H @ torch.linalg.pinv(H)  # [inst, T, T]
    return torch.diagonal(P, dim1=-2, dim2=-1)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    m = 16
    # 1. ours vs naive at T = 1e4 (1 instance; the naive T×T matrix is 400 MB in float32)
    T = 2_000 if FAST else 10_000
    H = torch.randn(1, T, m)
    reps = 3 if FAST else 5
    for name, ours, naive in [
        ("data_dimensionality", data_dimensionality, naive_data_dim),
        ("max_data_dimensionality", max_data_dimensionality, naive_max_data_dim),
    ]:
        t_ours = timeit(lambda f=ours: f(H), reps)
        t_naive = timeit(lambda f=naive: f(H), reps)
        err = float((ours(H) - naive(H)).abs().max())
        rows.append(
            (f"{name}, T={T:.0e}, m={m}", t_naive, t_ours, f"{t_naive / t_ours:.0f}x", f"{err:.1e}")
        )
    # 2. ours at T = 1e6, m = 16, 4 instances (target: under 2 s on 2 cores)
    T_big = 100_000 if FAST else 1_000_000
    Hb = torch.randn(4, T_big, m)
    t_big = timeit(lambda: (data_dimensionality(Hb), max_data_dimensionality(Hb)), 3)
    rows.append((f"both, T={T_big:.0e}, m={m}, 4 inst", float("nan"), t_big, "target < 2 s", ""))
    # 3. hook overhead: a forward pass with a DimensionalityProbe attached vs without
    B = 10_000
    model = Bottleneck(n_features=100, d_hidden=m, n_instances=4)
    x = ml.SparseFeatures(100, 0.9).sample(B, n_instances=4, seed=0)
    with torch.no_grad():
        t_plain = timeit(lambda: model(x), 20)

        def probed():
            with ml.probing(model, DimensionalityProbe()):
                model(x)

        t_probe = timeit(probed, 20)
    rows.append(
        (
            f"forward, batch={B:.0e}: probe vs plain",
            t_probe,
            t_plain,
            f"{t_probe / t_plain:.2f}x",
            "target < 1.2x",
        )
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of repeats")
    hdr = f"{'case':<42} {'naive/probed s':>14} {'ours/plain s':>12} {'ratio':>13} {'note':>13}"
    print(hdr)
    print("-" * len(hdr))
    for name, a, b, r, note in rows:
        a_s = "-" if a != a else f"{a:.4f}"
        print(f"{name:<42} {a_s:>14} {b:>12.4f} {r:>13} {note:>13}")


if __name__ == "__main__":
    main()
