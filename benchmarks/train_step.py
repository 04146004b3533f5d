"""One training step, eager vs fused, for each toy model, against this machine's roofline.

    python benchmarks/train_step.py --threads 1          # ~1 min
    python benchmarks/train_step.py --threads 2
    python benchmarks/train_step.py --threads 1 --sweep  # + the bottleneck cpu-preset sweep,
                                                         #   eager vs fused (~10 min)
    python benchmarks/train_step.py --threads 1 --clock cpu  # quiet-machine estimate, see below

A step is what ``memlens.train`` does per iteration (``memlens.training.step_once``): losses,
gradients and the AdamW update. "eager" is the autograd path (``MEMLENS_COMPILE=0``); "fused" is
the model's ``fused_loss_and_grads``. Each figure is the median of ``--repeats`` steps, eager and
fused interleaved in one run. ``--clock wall`` (default) times what a user waits for, on a shared
machine too; ``--clock cpu`` (one thread only) times the process's CPU time, which leaves out the
time other programs hold the core: an estimate of a quiet machine's wall time.

Roofline. The benchmark measures, in the same run and at the same thread count, the sgemm rate
(a 2048 x 2048 matmul, F flop/s) and the copy bandwidth (a 256 MB copy, counting bytes read and
written, B byte/s). A step's roofline is max(flops / F, bytes / B), with the work each model's
maths needs at the least, not what an implementation happens to do (a multiply-add is 2 flops, an
element-wise op 1; elementwise ops are costed at the sgemm rate, which only fused multiply-adds
reach, so a kernel can come in under this roofline):

* bottleneck, I instances, T points, n features, m hidden, K active inputs (K ≈ ITn(1-S)):
  per (point, instance, feature): the decoder ``Dᵀh`` (m multiply-adds), its gradient and the
  hidden gradient (2m), ReLU, residual, importance, square-and-sum (2), ReLU mask, bias gradient
  (6) = 6m + 7 flops; per active input: the encoder and its gradient, 4m flops; plus AdamW,
  about 15 flops and 28 bytes per parameter. Bytes: the sparse input, 8 bytes per active entry
  (index and value) + 8 per row. The benchmark step (I = 32, n = 1000, m = 2, T = 1000, S = 0.99)
  is 0.61 GFLOP and 5.5 MB (2.8 MB of sparse input, 2.7 MB of AdamW state): compute-bound.
  Read dense, as the issue first counted it, the step is 30 flops per element (0.96 GFLOP) plus
  the 128 MB input.
* MLP block, d -> k -> o: matmuls 2IT(2dk + 3ko) flops (forward two, backward three); per hidden
  unit 4 element-wise flops (bias, ReLU, mask, bias gradient), per output 5 (bias, residual,
  square-and-sum, bias gradient). Bytes: inputs and targets, 4IT(d + o). The benchmark step
  (I = 39, 20 -> 64 -> 100, T = 3000) is 5.2 GFLOP and 65 MB (56 MB of data).
* unembed, d -> V logits, cross-entropy: matmuls 4ITdV; per logit 7 element-wise flops (bias,
  max, subtract, exp counted as ONE flop, sum, divide, bias gradient). Bytes: inputs and int64
  targets, IT(4d + 8). The benchmark step (I = 39, d = 20, V = 101, T = 3000) is 1.03 GFLOP and
  13 MB.

The last line reads ``bottleneck step: F.F ms fused vs E.E ms eager = R.Rx roofline``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from capacity import Capacity

from memlens import native
from memlens.data import SparseFeatures
from memlens.fused import fused_step
from memlens.training import step_once
from toy_models import Bottleneck, MLPBlock, MLPTask, Unembed, UnembedTask

ADAM_FLOPS, ADAM_BYTES = 15, 28  # per parameter: AdamW's arithmetic and its four tensors


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (first-touch page faults, kernel load)
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return 1e3 * statistics.median(times)


def machine_limits(repeats: int) -> tuple[float, float]:
    """(sgemm flop/s, copy bytes/s) at the current thread count."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = torch.empty(2048, 2048)
    ms = median_ms(lambda: torch.mm(a, b, out=c), max(repeats, 5))
    flops = 2 * 2048**3 / (ms / 1e3)
    src, dst = torch.rand(2**26), torch.zeros(2**26)  # 256 MB each, touched
    ms = median_ms(lambda: dst.copy_(src), max(repeats, 5))
    return flops, 2 * src.numel() * 4 / (ms / 1e3)


def bottleneck_case():
    inst, n, m, T, S = 32, 1000, 2, 1000, 0.99
    x = SparseFeatures(n, S, normalize=True).sample(T, inst, seed=0)
    model = Bottleneck(n, m, n_instances=inst, seed=0)
    K = int((x != 0).sum())
    params = sum(p.numel() for p in model.parameters())
    flops = (6 * m + 7) * inst * T * n + 4 * m * K + ADAM_FLOPS * params
    bytes_ = 8 * K + 8 * inst * T + ADAM_BYTES * params
    return "bottleneck", f"{inst} x (n={n}, m={m}, T={T}, S={S})", model, x, flops, bytes_


def mlp_case():
    inst, d, k, o, T = 39, 20, 64, 100, 3000
    task = MLPTask(SparseFeatures(o, 0.99, normalize=True), d, n_instances=inst)
    batch = task.sample(T, seed=0)
    model = MLPBlock(d, k, o, n_instances=inst, seed=0)
    params = sum(p.numel() for p in model.parameters())
    flops = inst * T * (2 * (2 * d * k + 3 * k * o) + 4 * k + 5 * o) + ADAM_FLOPS * params
    bytes_ = 4 * inst * T * (d + o) + ADAM_BYTES * params
    return "mlp", f"{inst} x ({d} -> {k} -> {o}, T={T})", model, batch, flops, bytes_


def unembed_case():
    inst, d, n, T = 39, 20, 100, 3000
    task = UnembedTask(SparseFeatures(n, 0.99, normalize=True), d, n_instances=inst)
    batch = task.sample(T, seed=0)
    V = task.d_vocab
    model = Unembed(d, V, n_instances=inst, seed=0)
    params = sum(p.numel() for p in model.parameters())
    flops = inst * T * (4 * d * V + 7 * V) + ADAM_FLOPS * params
    bytes_ = inst * T * (4 * d + 8) + ADAM_BYTES * params
    return "unembed", f"{inst} x ({d} -> {V} logits, T={T})", model, batch, flops, bytes_


def step_times(model, data, repeats: int) -> tuple[float, float]:
    """(eager ms, fused ms): medians of single steps, the two interleaved."""
    data = model.check_batch(data)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    fused = fused_step(model)
    if fused is None:
        raise RuntimeError("the fused step is unavailable here (compiler? MEMLENS_COMPILE?)")
    step_once(model, opt, data, None)
    step_once(model, opt, data, fused)  # builds the kernel / derived data once
    eager_t, fused_t = [], []
    for _ in range(repeats):
        for fn, out in ((None, eager_t), (fused, fused_t)):
            t0 = CLOCK()
            step_once(model, opt, data, fn)
            out.append(CLOCK() - t0)
    return 1e3 * statistics.median(eager_t), 1e3 * statistics.median(fused_t)


def data_generation(repeats: int) -> None:
    """SparseFeatures: data version 1 (two dense draws per point) vs 2 (active entries only)."""
    print("\ndata generation, SparseFeatures(n=1000, S=0.99, normalize=True), 32 instances")
    print("| draw | version 1 (ms) | version 2 (ms) | speed-up |\n|---|---|---|---|")
    for what, T in (("sample(T=1000)", 1000), ("one batch of 256", 256)):
        ms = {}
        for v in (1, 2):
            feats = SparseFeatures(1000, 0.99, normalize=True, data_version=v)
            ms[v] = median_ms(lambda f=feats, T=T: f.sample(T, 32, seed=0), repeats)
        print(f"| {what} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[1] / ms[2]:.1f}x |")


def sweep_wall(threads: int) -> None:
    """The bottleneck cpu-preset sweep, eager vs fused, as a user runs it (a fresh kernel cache:
    the fused figure includes the first-ever compile)."""
    print("\nbottleneck cpu-preset sweep (36 cells, 1000 full-batch steps), wall time")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("0", "1"):
            env = dict(
                os.environ,
                MEMLENS_COMPILE=mode,
                OMP_NUM_THREADS=str(threads),
                MEMLENS_CACHE_DIR=os.path.join(tmp, "cache"),
            )
            cmd = [sys.executable, "-m", "memlens.cli", "sweep", "--model", "bottleneck"]
            cmd += ["--preset", "cpu", "--out", os.path.join(tmp, f"out{mode}"), "--no-progress"]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            times[mode] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[native.CACHE_ENV] = tmp
        t0 = time.perf_counter()
        from toy_models import bottleneck_kernel

        native.load_library("memlens_bottleneck_probe", bottleneck_kernel.SOURCE_FILE.read_text())
        compile_s = time.perf_counter() - t0
        del os.environ[native.CACHE_ENV]
    print(
        f"eager {times['0']:.0f} s, fused {times['1']:.0f} s (incl. a first-ever compile of "
        f"{compile_s:.1f} s) = {times['0'] / times['1']:.1f}x faster"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default 1)")
    ap.add_argument("--repeats", type=int, default=7, help="steps timed per arm (median)")
    ap.add_argument("--sweep", action="store_true", help="also time the cpu-preset sweep")
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time or CPU time (1 thread)"
    )
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("--threads and --repeats must be >= 1")
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu measures one thread's work: use it with --threads 1")
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    cap = Capacity(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock")
    F, B = machine_limits(args.repeats)
    print(f"measured limits: sgemm {F / 1e9:.0f} GFLOP/s, copy {B / 1e9:.1f} GB/s")
    rows = []
    for case in (bottleneck_case, mlp_case, unembed_case):
        name, size, model, data, flops, bytes_ = case()
        eager, fused = step_times(model, data, args.repeats)
        roof = 1e3 * max(flops / F, bytes_ / B)
        rows.append((name, size, flops, bytes_, roof, eager, fused))
    print(
        "\n| model (size) | GFLOP | MB | roofline (ms) | eager (ms) | fused (ms) "
        "| fused / roofline | eager / fused |\n|---|---|---|---|---|---|---|---|"
    )
    for name, size, flops, bytes_, roof, eager, fused in rows:
        print(
            f"| {name} {size} | {flops / 1e9:.2f} | {bytes_ / 1e6:.1f} | {roof:.1f} "
            f"| {eager:.1f} | {fused:.1f} | {fused / roof:.1f}x | {eager / fused:.1f}x |"
        )
    data_generation(args.repeats)
    if args.sweep:
        sweep_wall(args.threads)
    name, size, flops, bytes_, roof, eager, fused = rows[0]
    print(cap.report())
    print(
        f"bottleneck step: {fused:.1f} ms fused vs {eager:.1f} ms eager = "
        f"{fused / roof:.1f}x roofline"
    )


if __name__ == "__main__":
    main()
