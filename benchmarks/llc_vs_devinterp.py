"""LLC estimation: memlens.estimate_llc vs devinterp 1.3.2's estimate_learning_coeff_with_summary.

The same trained TMS model (20 features, 5 hidden, tied, 10^4 training points) and the same
settings: nβ = n / log n (passed explicitly: devinterp's default is the batch size), ε = 3e-3
(explicit, on both sides), γ = 1, 4 chains x 200 draws, no burn-in, minibatch 256, L_n(w*) on the
full training set. memlens also computes its diagnostics (R-hat and ESS on a fixed evaluation
set, divergence, per-cell health) inside the timed call; devinterp computes none. Then the
scaling case: 8 temperatures x 8 chains, one memlens call vs 8 devinterp calls. Each time is the
median of ``--repeats`` runs, memlens and devinterp measured in the same invocation. Finally, for
information (not timed against devinterp): what memlens's health flags say about ε = 3e-3, and
the LLC with ``step_size="auto"``.

devinterp is never a memlens dependency: it runs in its own virtualenv (created on first use,
``pip install torch==2.13.0`` first, then ``devinterp==1.3.2``), in a subprocess, reading the
weights and data from a temporary file. If it cannot be installed, this script says so and still
prints memlens's timings.

Both sides run with the same thread count (``--threads``, default 1: torch's setting, memlens's
``MEMLENS_THREADS`` and the subprocess's ``OMP_NUM_THREADS``), and the script prints how quiet the
machine was (``benchmarks/capacity.py``: the cores other processes kept busy over the run, and a
probe before and after), so a quiet-machine ratio can be told from a loaded one.
``benchmarks/llc_vs_canonical_interp.py`` times this workload against canonical-interp 0.2.7 and
devinterp 1.3.2 in one run.

    python benchmarks/llc_vs_devinterp.py [--repeats 3] [--threads 1] [--venv /tmp/venv-devinterp]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from capacity import Capacity

import memlens
from memlens.data import SparseFeatures
from toy_models import Bottleneck

N, FEATURES, HIDDEN = 10_000, 20, 5
EPS, GAMMA, CHAINS, DRAWS, BATCH = 3e-3, 1.0, 4, 200, 256

DEVINTERP_SCRIPT = r"""
import json, math, statistics, sys, time, warnings
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
warnings.filterwarnings("ignore")
from devinterp.slt.sampler import estimate_learning_coeff_with_summary
from devinterp.optim.sgld import SGLD
from devinterp.utils import make_evaluate

blob = torch.load(sys.argv[1])
repeats, temps, chains_scaling = int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))

class TMS(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(blob["W"].clone())
        self.b = nn.Parameter(blob["b"].clone())
    def forward(self, x):
        return torch.relu((x @ self.W.T) @ self.W + self.b)

def criterion(pred, target):  # squared error summed over features, mean over the batch
    return ((pred - target) ** 2).sum(-1).mean()

x = blob["x"]
n = len(x)
nbeta = n / math.log(n)
loader = DataLoader(TensorDataset(x, x), batch_size=blob["batch"], shuffle=True)
model = TMS()
init = criterion(model(x), x).detach()

def run(chains, nb, seed):
    return estimate_learning_coeff_with_summary(
        TMS(), loader, evaluate=make_evaluate(criterion), sampling_method=SGLD,
        optimizer_kwargs=dict(lr=blob["eps"], localization=blob["gamma"], nbeta=nb),
        num_chains=chains, num_draws=blob["draws"], num_burnin_steps=0, init_loss=init,
        seed=seed, device="cpu", verbose=False)

t0 = time.perf_counter()
run(blob["chains"], nbeta, 999)  # warm-up, untimed in the medians
first = time.perf_counter() - t0
times, cpu, out = [], [], None
for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = run(blob["chains"], nbeta, r)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
scal_times, scal_cpu, scal = [], [], []
for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    scal = []
    for k, t in enumerate(temps):
        try:
            scal.append(run(chains_scaling, nbeta / t, 100 * r + k))
        except RuntimeError:  # devinterp raises on a NaN loss
            scal.append({"llc/mean": float("nan")})
    scal_times.append(time.perf_counter() - t0)
    scal_cpu.append(time.process_time() - c0)
print(json.dumps({"first": first, "seconds": times, "llc_mean": float(out["llc/mean"]), "cpu": cpu,
                  "scaling_cpu": statistics.median(scal_cpu),
                  "llc_std": float(out["llc/std"]),
                  "scaling_seconds": statistics.median(scal_times),
                  "scaling_llc": [float(s["llc/mean"]) for s in scal]}))
"""


def ensure_devinterp(venv: str) -> str | None:
    """The venv's python with devinterp 1.3.2 importable, or None (with the reason printed)."""
    py = os.path.join(venv, "bin", "python")
    try:
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            pip = [py, "-m", "pip", "install", "-q"]
            subprocess.run(pip + ["torch==2.13.0"], check=True)  # first, so no other torch lands
            subprocess.run(pip + ["devinterp==1.3.2"], check=True)
        check = subprocess.run(
            [py, "-c", "import devinterp, torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"devinterp venv: {venv} (torch {check.stdout.strip()})")
        return py
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"devinterp 1.3.2 could not be installed/imported in {venv}: {exc}")
        return None


def trained_workload():
    """The benchmark's trained model, data, sampler settings, ladder and nβ (the same every run)."""
    feats = SparseFeatures(n_features=FEATURES, sparsity=0.9)
    train = feats.sample(T=N, n_instances=1, seed=0)
    model = Bottleneck(n_features=FEATURES, d_hidden=HIDDEN, n_instances=1, seed=0)
    memlens.train(model, train, steps=2000, lr=1e-2, batch_size=1024, progress=False)
    nbeta = N / math.log(N)
    kw = dict(
        nbeta=nbeta,
        chains=CHAINS,
        draws=DRAWS,
        burnin=0,
        step_size=EPS,
        localization=GAMMA,
        batch_size=BATCH,
        progress=False,
    )
    temps = torch.logspace(0, 2, 8).tolist()  # t >= 1: ε = 3e-3 diverges when colder
    return model, train, kw, temps, nbeta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "venv-devinterp"))
    ap.add_argument("--threads", type=int, default=1, help="threads on both sides (default 1)")
    ap.add_argument(
        "--devinterp-python",
        default=None,
        help="an interpreter that already imports devinterp 1.3.2 (instead of --venv)",
    )
    args = ap.parse_args()
    os.environ["MEMLENS_THREADS"] = str(args.threads)  # memlens's thread policy: this count
    torch.set_num_threads(args.threads)
    cap = Capacity(args.threads)

    model, train, kw, temps, nbeta = trained_workload()

    ml_times, scal_times, res, scal = [], [], None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memlens.estimate_llc(model, train, seed=99, **kw)  # warm-up
        for r in range(args.repeats):
            t0 = time.perf_counter()
            res = memlens.estimate_llc(model, train, seed=r, **kw)
            ml_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scal = memlens.temper(model, train, temps, seed=r, **{**kw, "chains": 8})
            scal_times.append(time.perf_counter() - t0)
    ml_scal = statistics.median(scal_times)
    ml_llc, ml_std = float(res.llc.mean[0, 0]), float(res.llc.std[0, 0])

    di = None
    py = args.devinterp_python or ensure_devinterp(args.venv)
    if py is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tms.pt")
            torch.save(
                {
                    "W": model.W.detach()[0].clone(),
                    "b": model.b.detach()[0].clone(),
                    "x": train[:, 0].clone(),
                    "eps": EPS,
                    "gamma": GAMMA,
                    "chains": CHAINS,
                    "draws": DRAWS,
                    "batch": BATCH,
                },
                path,
            )
            script = os.path.join(tmp, "run_devinterp.py")
            with open(script, "w") as f:
                f.write(DEVINTERP_SCRIPT)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(
                [py, script, path, str(args.repeats), json.dumps(temps), "8", str(args.threads)],
                capture_output=True,
                text=True,
                env=env,
            )
            print(f"devinterp ran in its venv ({len(temps)} calls for the ladder)")
            if proc.returncode == 0:
                di = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                print("devinterp run failed:\n" + proc.stderr[-2000:])

    print(
        f"\nTMS {FEATURES}->{HIDDEN}, n={N}, nβ=n/log n={nbeta:.1f}, ε={EPS}, γ={GAMMA}, "
        f"batch {BATCH}, {args.threads} thread(s) on both sides; median of {args.repeats} repeats"
    )
    print(cap.report())
    print(f"{'':38}{'memlens':>14}{'devinterp 1.3.2':>18}{'ratio':>9}")
    t_ml = statistics.median(ml_times)
    health = scal.health
    print(
        f"memlens health at ε = {EPS}: {int(health.ok.sum())}/{health.ok.numel()} ladder cells "
        f"healthy; t=1: {res.health.describe(0, 0)}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        auto = memlens.estimate_llc(model, train, **{**kw, "step_size": "auto", "burnin": None})
        t_auto = time.perf_counter() - t0
    print(
        f"memlens step_size='auto' at t=1 (not timed against devinterp): λ̂ = "
        f"{float(auto.llc.mean[0, 0]):.2f} ± {float(auto.llc.se[0, 0]):.2f} at ε = "
        f"{float(auto.step_size[0, 0]):.2g}, {auto.config.thin} steps per draw, "
        f"{t_auto:.1f} s; {auto.health.describe(0, 0)}"
    )
    if di is None:
        print(f"{'4 chains x 200 draws, seconds':38}{t_ml:>14.3f}{'n/a':>18}")
        print(f"{'LLC mean ± std over chains':38}{ml_llc:>8.3f} ± {ml_std:.3f}")
        print(f"{'8 temps x 8 chains, seconds':38}{ml_scal:>14.3f}{'n/a':>18}")
        print("speedup vs devinterp 1.3.2: n/a (devinterp 1.3.2 could not run)")
        return
    t_di = statistics.median(di["seconds"])
    r4, r64 = t_di / t_ml, di["scaling_seconds"] / ml_scal
    print(f"{'4 chains x 200 draws, seconds':38}{t_ml:>14.3f}{t_di:>18.3f}{r4:>8.1f}x")
    print(
        f"{'LLC mean ± std over chains':38}{ml_llc:>7.3f} ± {ml_std:<5.3f}"
        f"{di['llc_mean']:>11.3f} ± {di['llc_std']:<5.3f}"
    )
    gap = abs(ml_llc - di["llc_mean"])
    spread = max(ml_std, di["llc_std"])
    print(
        f"{'|difference| vs larger chain std':38}{gap:>14.3f}{spread:>18.3f}"
        f"  {'agree' if gap <= spread else 'DISAGREE'}"
    )
    print(
        f"{'8 temps x 8 chains, seconds':38}{ml_scal:>14.3f}{di['scaling_seconds']:>18.3f}"
        f"{r64:>8.1f}x   (devinterp: 8 calls)"
    )
    print("LLC per temperature (memlens | devinterp):")
    for t, a, b in zip(temps, scal.llc.mean[:, 0].tolist(), di["scaling_llc"], strict=True):
        print(f"  t={t:7.3f}  {a:9.3f} | {b:9.3f}")
    print(f"speedup vs devinterp 1.3.2: {r4:.1f}x (4x200), {r64:.1f}x (8x8 ladder)")


if __name__ == "__main__":
    main()
