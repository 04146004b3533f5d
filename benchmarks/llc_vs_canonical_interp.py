"""LLC estimation: memlens vs canonical-interp 0.2.7 (vmapped chains, torch.compile) and devinterp
1.3.2, side by side in one run.

The workload of ``benchmarks/llc_vs_devinterp.py``: the same trained TMS model (20 features, 5
hidden, tied, 10^4 training points), nβ = n / log n, ε = 3e-3, γ = 1, 4 chains x 200 draws, no
burn-in, minibatch 256, L_n(w*) given; then 8 temperatures x 8 chains (one memlens call; 8 calls of
each peer, which cannot batch temperatures). The same weights and data go to every side through a
temporary file, and every side runs with the same thread count (``--threads``, default 1: torch's
setting and ``OMP_NUM_THREADS`` in each process). The run is ``--repeats`` rounds; each round
times memlens (3 warm calls of each workload) and then each peer (a fresh process: one warm-up
call, then timed calls of each workload: 3 for canonical-interp, whose second call may still
recompile, 1 for devinterp, whose ladder takes half a minute) back to back, so a machine whose
speed drifts over minutes slows both sides of a round alike. The speed-ups are the medians over
the rounds of each round's ratio; the times printed are medians over all warm calls, and each
side's first call (canonical-interp's includes its ``torch.compile``, memlens's its kernel load)
is printed beside them. memlens computes its diagnostics (R-hat, ESS, health) inside the timed
call; the peers compute none.

The peers are never memlens dependencies; each runs in its own virtualenv, in a subprocess:
``--canonical-venv`` (Python 3.12, ``pip install torch==2.13.0 canonical-interp==0.2.7``; on an
older Python install its requirements, then ``pip install --no-deps --ignore-requires-python
canonical-interp==0.2.7``: this script gives ``itertools`` a ``batched`` where it lacks one) and
``--venv`` for devinterp (created on first use, as in ``llc_vs_devinterp.py``). A peer that cannot
run is reported as such; the others are still timed.

How quiet the machine was is measured and printed (``benchmarks/capacity.py``): the cores other
processes kept busy over the run, and a probe before and after. The last line is

    speedup: A.Ax canonical-interp (4x200), B.Bx (8x8 ladder); C.Cx devinterp 1.3.2 (4x200),
    D.Dx (8x8 ladder)

(one line).

    python benchmarks/llc_vs_canonical_interp.py [--repeats 3] [--threads 1] [--no-devinterp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from capacity import Capacity
from llc_vs_devinterp import (
    BATCH,
    CHAINS,
    DEVINTERP_SCRIPT,
    DRAWS,
    EPS,
    GAMMA,
    ensure_devinterp,
    trained_workload,
)
from tqdm import tqdm

import memlens

MEMLENS_PER_ROUND = 3  # warm memlens calls of each workload per round
med = statistics.median

CANONICAL_SCRIPT = r"""
import itertools, json, math, statistics, sys, time, warnings, logging
if not hasattr(itertools, "batched"):  # canonical-interp uses itertools.batched (Python 3.12)
    def _batched(iterable, n):
        it = iter(iterable)
        while chunk := tuple(itertools.islice(it, n)):
            yield chunk
    itertools.batched = _batched
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from canonical_interp.slt import LLCEstimator

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
init = float(criterion(model(x), x))

def run(chains, nb, seed):
    est = LLCEstimator(draws=blob["draws"], chains=chains, burnin_steps=0,
                       learning_rate=blob["eps"], localization=blob["gamma"], nbeta=nb)
    est.estimate_llc(TMS(), loader, criterion_fn=criterion, seed=seed, show_progress=False,
                     current_loss=init)
    return est.get_metrics()

def ladder(r):
    out = []
    for k, t in enumerate(temps):
        m = run(chains_scaling, nbeta / t, 100 * r + k)
        out.append(float(m["llc_mean"]))
    return out

t0 = time.perf_counter()
first = run(blob["chains"], nbeta, 999)
first_s = time.perf_counter() - t0
times, cpu = [], []
for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = run(blob["chains"], nbeta, r)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
t0 = time.perf_counter()
ladder(999)
first_ladder = time.perf_counter() - t0
scal_times, scal_cpu = [], []
for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    scal = ladder(r)
    scal_times.append(time.perf_counter() - t0)
    scal_cpu.append(time.process_time() - c0)
print(json.dumps({"first": first_s, "seconds": times, "llc_mean": float(out["llc_mean"]),
                  "llc_std": float(out["llc_std"]), "first_ladder": first_ladder,
                  "scaling_seconds": scal_times, "scaling_llc": scal, "cpu": cpu,
                  "scaling_cpu": statistics.median(scal_cpu)}))
"""


def run_peer(name: str, py: str | None, script: str, blob_path: str, args, temps,
             repeats: int = 1) -> dict | None:  # fmt: skip
    """Run ``script`` in ``py`` with the thread count fixed (its warm-up call, then ``repeats``
    timed calls of each workload); its JSON result, or None."""
    if py is None:
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "peer.py")
        with open(path, "w") as f:
            f.write(script)
        cmd = [py, path, blob_path, str(repeats), json.dumps(temps), "8", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{name} run failed:\n" + proc.stderr[-2000:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def canonical_python(venv: str) -> str | None:
    """The venv's python if it imports canonical-interp 0.2.7 (else None, the reason printed)."""
    py = os.path.join(venv, "bin", "python")
    shim = "import itertools; itertools.batched = getattr(itertools, 'batched', None) or zip; "
    check = subprocess.run(
        [py, "-c", shim + "import canonical_interp, torch, importlib.metadata as m; "
         "print(m.version('canonical-interp'), torch.__version__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode != 0:
        print(f"canonical-interp is not importable from {venv}; create it with Python 3.12: "
              f"python3.12 -m venv {venv} && {venv}/bin/pip install torch==2.13.0 "
              "canonical-interp==0.2.7")  # fmt: skip
        return None
    print(f"canonical-interp venv: {venv} (canonical-interp, torch: {check.stdout.strip()})")
    return py


def time_memlens(model, train, kw, temps, repeats, timings=None):
    """Warm calls (and, on the first round, the first calls) of memlens, appended to
    ``timings``: wall and CPU seconds of each 4x200 and ladder call, and the last results."""
    t = timings or {"first": None, "seconds": [], "cpu": [], "scaling_seconds": []}
    t.setdefault("scaling_cpu", [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if t["first"] is None:
            t0 = time.perf_counter()
            memlens.estimate_llc(model, train, seed=99, **kw)
            t["first"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            memlens.temper(model, train, temps, seed=99, **{**kw, "chains": 8})
            t["first_ladder"] = time.perf_counter() - t0
        for r in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            t["res"] = memlens.estimate_llc(model, train, seed=r, **kw)
            t["seconds"].append(time.perf_counter() - t0)
            t["cpu"].append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            t["scal"] = memlens.temper(model, train, temps, seed=r, **{**kw, "chains": 8})
            t["scaling_seconds"].append(time.perf_counter() - t0)
            t["scaling_cpu"].append(time.process_time() - c0)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--canonical-venv", default=os.path.join(tempfile.gettempdir(), "venv-canonical")
    )
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "venv-devinterp"))
    ap.add_argument("--no-devinterp", action="store_true", help="time canonical-interp only")
    args = ap.parse_args()
    os.environ["MEMLENS_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    cap = Capacity(args.threads)

    model, train, kw, temps, nbeta = trained_workload()
    ml = time_memlens(model, train, kw, temps, 0)  # the first calls
    can_py = canonical_python(args.canonical_venv)
    di_py = None if args.no_devinterp else ensure_devinterp(args.venv)
    # [python, script, results so far, timed calls per round]: canonical-interp's second call
    # can still recompile (torch.compile's automatic dynamic shapes), so it times three a round
    peers = {"canonical-interp": [can_py, CANONICAL_SCRIPT, None, 3],
             "devinterp": [di_py, DEVINTERP_SCRIPT, None, 1]}  # fmt: skip
    rounds = []  # per round: memlens's medians, then each peer's times, measured back to back
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "tms.pt")
        torch.save(
            {"W": model.W.detach()[0].clone(), "b": model.b.detach()[0].clone(),
             "x": train[:, 0].clone(), "eps": EPS, "gamma": GAMMA, "chains": CHAINS,
             "draws": DRAWS, "batch": BATCH},
            blob,
        )  # fmt: skip
        for _ in tqdm(range(args.repeats), desc="rounds", disable=not sys.stderr.isatty()):
            n4, n64 = len(ml["seconds"]), len(ml["scaling_seconds"])
            ml = time_memlens(model, train, kw, temps, MEMLENS_PER_ROUND, ml)
            rnd = {"memlens": (med(ml["seconds"][n4:]), med(ml["scaling_seconds"][n64:]))}
            for name, peer in peers.items():
                py, script, acc, reps = peer
                out = run_peer(name, py, script, blob, args, temps, reps) if py else None
                if out is None:  # it failed (reason printed) or is absent: not timed again
                    peer[0] = peer[2] = None
                    continue
                peer[2] = _merge(acc, out)
                rnd[name] = (med(out["seconds"]), _scalar(out["scaling_seconds"]))
            rounds.append(rnd)
    can, di = peers["canonical-interp"][2], peers["devinterp"][2]
    first, first_ladder, res, scal = ml["first"], ml["first_ladder"], ml["res"], ml["scal"]
    times, scal_times = ml["seconds"], ml["scaling_seconds"]

    t4, t64 = med(times), med(scal_times)
    print(
        f"\nTMS 20->5, n={len(train)}, nβ=n/log n={nbeta:.1f}, ε={EPS}, γ={GAMMA}, batch {BATCH}; "
        f"{args.threads} thread(s) on every side; {args.repeats} rounds, each timing memlens "
        f"({MEMLENS_PER_ROUND} warm calls) and then every peer (a fresh process: a warm-up "
        f"call, then timed ones) back to back; times are medians over all warm calls, "
        f"speed-ups medians over the rounds of each round's ratio"
    )
    print(cap.report())
    print(f"{'':34}{'memlens':>12}{'canonical-interp':>18}{'devinterp 1.3.2':>17}")

    def row(label, ours, a, b):
        fa = "n/a" if a is None else f"{a:.3f}"
        fb = "n/a" if b is None else f"{b:.3f}"
        print(f"{label:34}{ours:>12.3f}{fa:>18}{fb:>17}")

    row("4 chains x 200 draws, warm s", t4, can and med(can["seconds"]), di and med(di["seconds"]))
    row("  first call, s", first, can and can["first"], di and di["first"])
    row("8 temps x 8 chains, warm s", t64, can and med(can["scaling_seconds"]),
        di and med(di["scaling_seconds"]))  # fmt: skip
    row("  first call, s", first_ladder, can and can["first_ladder"], None)
    ml_llc, ml_std = float(res.llc.mean[0, 0]), float(res.llc.std[0, 0])
    print(f"{'λ̂ at t=1, mean ± std over chains':34}{ml_llc:>7.2f} ± {ml_std:<4.1f}", end="")
    for peer in (can, di):
        print(
            "" if peer is None else f"{peer['llc_mean']:>10.2f} ± {peer['llc_std']:<5.1f}", end=""
        )
    print()
    print("λ̂ per temperature (memlens | canonical-interp | devinterp):")
    for k, t in enumerate(temps):
        c = "n/a" if can is None else f"{can['scaling_llc'][k]:.2f}"
        d = "n/a" if di is None else f"{di['scaling_llc'][k]:.2f}"
        print(f"  t={t:7.3f}  {float(scal.llc.mean[k, 0]):9.2f} | {c:>9} | {d:>9}")

    cpu4, cpu64 = med(ml["cpu"]), med(ml["scaling_cpu"])
    present = [(n, p) for n, p in (("canonical-interp", can), ("devinterp", di)) if p is not None]
    print(
        f"CPU seconds (process time, less sensitive to load): memlens {cpu4:.3f} / {cpu64:.3f}; "
        + "; ".join(
            f"{n} {med(p['cpu']):.3f} / {med(p['scaling_cpu']):.3f} "
            f"({med(p['cpu']) / cpu4:.1f}x / {med(p['scaling_cpu']) / cpu64:.1f}x)"
            for n, p in present
        )
    )

    def ratio(name, k):
        """Median over the rounds of the peer's time / memlens's (k = 0: 4x200, 1: ladder)."""
        r = [rnd[name][k] / rnd["memlens"][k] for rnd in rounds if name in rnd]
        return "n/a" if not r or peers[name][2] is None else f"{med(r):.1f}x"

    for name in peers:
        per = [f"{rnd[name][0] / rnd['memlens'][0]:.1f}x / {rnd[name][1] / rnd['memlens'][1]:.1f}x"
               for rnd in rounds if name in rnd]  # fmt: skip
        if per:
            print(f"per round, {name} (4x200 / ladder): " + ", ".join(per))
    print(
        f"speedup: {ratio('canonical-interp', 0)} canonical-interp (4x200), "
        f"{ratio('canonical-interp', 1)} (8x8 ladder); "
        f"{ratio('devinterp', 0)} devinterp 1.3.2 (4x200), "
        f"{ratio('devinterp', 1)} (8x8 ladder)"
    )


def _scalar(v) -> float:
    return statistics.median(v) if isinstance(v, list) else float(v)


def _merge(acc: dict | None, out: dict) -> dict:
    """One peer's results over the rounds: times pooled, first calls from the first round,
    estimates from the last."""
    if acc is None:
        acc = {"seconds": [], "cpu": [], "scaling_seconds": [], "scaling_cpu": [],
               "first": out.get("first"), "first_ladder": out.get("first_ladder")}  # fmt: skip
    acc["seconds"] += out["seconds"]
    acc["cpu"] += out["cpu"]
    acc["scaling_seconds"].append(_scalar(out["scaling_seconds"]))
    acc["scaling_cpu"].append(_scalar(out["scaling_cpu"]))
    for key in ("llc_mean", "llc_std", "scaling_llc"):
        acc[key] = out[key]
    return acc


if __name__ == "__main__":
    main()
