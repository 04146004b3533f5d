"""Benchmark: data dimensionality D and maximal data dimensionality D* (leverage scores) through the
m × m Gram matrix, side by side with their baselines in one run.

1. T = 10⁴, m = 16, one instance: ours against naive implementations that materialise the T × T
   matrix (``H Hᵀ`` for D, the hat matrix ``H H⁺`` for D*), with the largest difference.
2. T = 10⁶, m = 16, 4 instances, activations in the hook layout ``[batch, inst, m]``: D and D*
   together (``data_and_max_data_dimensionality``, what the probe calls) against one O(T·m²) pass,
   the yardstick, taken three ways: ``torch.bmm`` of H (contiguous ``[inst, T, m]``) with an m × m
   matrix into a preallocated output (the fastest pass we found), the same bmm allocating its
   output (the first touch of 256 MB costs more than the arithmetic), and a chunked ``(H A)²`` row
   sum on the hook layout (a pass that, like ours, ends in one number per point). The ≤ 3x target
   is checked against the first and the last. Also D and D* as two separate calls.
3. The forward-pass overhead of an attached DimensionalityProbe (batch 10⁴).

Every time is the median of several repeats, the compared functions run interleaved (round robin,
the order reversed every other round) so that load from other processes hits both sides alike.
The forward-pass overhead also prints the fastest repeat: a 16 MB output per forward makes its
median noisy on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/dimensionality.py
    MEMLENS_FAST=1 python benchmarks/dimensionality.py     # smaller sizes, a quick check
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from capacity import Capacity

import memlens as ml
import probes.dimensionality as dim
from probes.dimensionality import (
    DimensionalityProbe,
    data_and_max_data_dimensionality,
    data_dimensionality,
    max_data_dimensionality,
)
from toy_models import Bottleneck

FAST = os.environ.get("MEMLENS_FAST") == "1"
TARGET = 3.0  # D + D* at T = 1e6 within this many O(T·m²) passes


def naive_data_dim(H: torch.Tensor) -> torch.Tensor:
    """D_i = ‖h_i‖² / Σ_j (ĥ_i·h_j)² through the T × T matrix of dot products; H is [T, inst, m]."""
    H = H.transpose(0, 1)
    Hn = H / H.norm(dim=-1, keepdim=True)
    G = Hn @ H.transpose(-1, -2)  # [inst, T, T]
    return H.norm(dim=-1) ** 2 / (G**2).sum(-1)


def naive_max_data_dim(H: torch.Tensor) -> torch.Tensor:
    """D*_i = diag(H (HᵀH)⁺ Hᵀ): the hat matrix, T × T per instance; H is [T, inst, m]."""
    H = H.transpose(0, 1)
    P = H @ torch.linalg.pinv(H)  # [inst, T, T]
    return torch.diagonal(P, dim1=-2, dim2=-1)


def interleaved(fns: dict, repeats: int, stat=statistics.median) -> dict:
    """Seconds of each function (``stat`` of the repeats, the median by default), run round robin
    after one warm-up each, the order reversed every other round."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: stat(v) for k, v in times.items()}


def rowsum_yardstick(H: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """One O(T·m²) pass on the hook layout: ``Σ_k ((H A)_k)²`` per point, in row chunks, with the
    chunk read in place as a transposed BLAS operand (the fastest single pass we found)."""
    T, inst, m = H.shape
    At = A.transpose(1, 2).contiguous()
    out = torch.empty(inst, T)
    rows = max(1, dim.CHUNK_ELEMENTS // (inst * m))
    for a in range(0, T, rows):
        out[:, a : a + rows] = torch.bmm(At, H[a : a + rows].permute(1, 2, 0)).square_().sum(1)
    return out


def main() -> None:
    torch.manual_seed(0)
    cap = Capacity()
    m = 16
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); times are medians of "
        "interleaved repeats"
    )

    # 1. ours vs naive O(T²), one instance (the naive T × T matrix is 400 MB in float32)
    T = 2_000 if FAST else 10_000
    H = torch.randn(T, 1, m)
    reps = 3 if FAST else 5
    print(f"\n1. T = {T:.0e}, m = {m}, 1 instance: ours vs naive O(T²)")
    print(f"{'function':<28} {'naive ms':>9} {'ours ms':>9} {'naive/ours':>11} {'max |diff|':>11}")
    for name, ours, naive in [
        ("data_dimensionality", data_dimensionality, naive_data_dim),
        ("max_data_dimensionality", max_data_dimensionality, naive_max_data_dim),
    ]:
        t = interleaved(
            {"ours": lambda f=ours: f(H, n_instances=1), "naive": lambda f=naive: f(H)}, reps
        )
        err = float((ours(H, n_instances=1) - naive(H)).abs().max())
        print(
            f"{name:<28} {t['naive'] * 1e3:9.1f} {t['ours'] * 1e3:9.2f} "
            f"{t['naive'] / t['ours']:10.0f}x {err:11.1e}"
        )

    # 2. D + D* at large T against one O(T·m²) pass, all on the same H
    T_big, inst = (100_000 if FAST else 1_000_000), 4
    Hb = torch.randn(T_big, inst, m)  # the hook layout [batch, inst, m]
    Hc = Hb.transpose(0, 1).contiguous()  # [inst, T, m] for the plain bmm
    A = torch.randn(inst, m, m)
    buf = torch.empty(inst, T_big, m)
    t = interleaved(
        {
            "bmm_out": lambda: torch.bmm(Hc, A, out=buf),
            "bmm": lambda: torch.bmm(Hc, A),
            "rowsum": lambda: rowsum_yardstick(Hb, A),
            "both": lambda: data_and_max_data_dimensionality(Hb, n_instances=inst),
            "separate": lambda: (
                data_dimensionality(Hb, n_instances=inst),
                max_data_dimensionality(Hb, n_instances=inst),
            ),
        },
        3 if FAST else 7,
    )
    print(f"\n2. T = {T_big:.0e}, m = {m}, {inst} instances, hook layout [batch, inst, m], float32")
    rows = [
        ("one pass: torch.bmm into a preallocated [inst, T, m] output", t["bmm_out"]),
        ("one pass: torch.bmm allocating its output", t["bmm"]),
        ("one pass: chunked (H A)² row sum, hook layout", t["rowsum"]),
        ("D and D* together (data_and_max_data_dimensionality)", t["both"]),
        ("D and D* as two separate calls", t["separate"]),
    ]
    print(f"   {'':<58} {'ms':>7} {'/ bmm out=':>11} {'/ row sum':>10}")
    for name, sec in rows:
        print(
            f"   {name:<58} {sec * 1e3:7.1f} {sec / t['bmm_out']:10.2f}x {sec / t['rowsum']:9.2f}x"
        )
    for name in ("bmm_out", "rowsum"):
        r = t["both"] / t[name]
        verdict = "met" if r <= TARGET else "NOT met"
        print(f"   target D and D* <= {TARGET:.0f}x one pass ({name}): {r:.2f}x, {verdict}")

    # 3. the probe's forward-pass overhead
    B = 10_000
    model = Bottleneck(n_features=100, d_hidden=m, n_instances=4)
    x = ml.SparseFeatures(100, 0.9).sample(B, n_instances=4, seed=0)

    def probed():
        with ml.probing(model, DimensionalityProbe()):
            model(x)

    with torch.no_grad():
        t = interleaved({"plain": lambda: model(x), "probed": probed}, 40, stat=lambda v: v)
    med = {k: statistics.median(v) for k, v in t.items()}
    low = {k: min(v) for k, v in t.items()}
    print(
        f"\n3. forward pass, batch {B:.0e}, bottleneck n=100 -> m={m}, 4 instances, plain vs with "
        "a DimensionalityProbe attached (the probe keeps a reference; its work is in result()):\n"
        f"   median {med['plain'] * 1e3:.2f} -> {med['probed'] * 1e3:.2f} ms = "
        f"{med['probed'] / med['plain']:.2f}x; fastest {low['plain'] * 1e3:.2f} -> "
        f"{low['probed'] * 1e3:.2f} ms = {low['probed'] / low['plain']:.2f}x"
    )
    print(cap.report())


if __name__ == "__main__":
    main()
