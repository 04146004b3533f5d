"""The thread policy (memlens.threads) and a CLI that starts without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import memlens as ml
from memlens import threads
from toy_models import Bottleneck


@pytest.fixture
def policy_env(monkeypatch):
    """No thread variables in the environment, and memlens's baseline = the current count, as in
    a fresh session where the user has not chosen."""
    for var in ("MEMLENS_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setitem(threads._state, "initial", before)
    monkeypatch.setitem(threads._state, "ours", None)
    yield
    torch.set_num_threads(before)


def test_small_steps_get_one_thread_and_the_count_is_restored(policy_env, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setitem(threads._state, "initial", 2)
    seen = []
    with threads.policy(threads.PARALLEL_WORK - 1) as n:
        seen.append(torch.get_num_threads())
    assert n == 1 and seen == [1] and torch.get_num_threads() == 2


def test_large_steps_use_only_idle_cores(policy_env, monkeypatch):
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    monkeypatch.setattr(threads, "other_busy_cores", lambda *a: 0.0)
    assert threads.choose(threads.PARALLEL_WORK) == 2  # an idle machine
    monkeypatch.setattr(threads, "other_busy_cores", lambda *a: 1.9)
    assert threads.choose(threads.PARALLEL_WORK) == 1  # both cores busy elsewhere


def test_the_user_always_wins(policy_env, monkeypatch):
    monkeypatch.setenv("MEMLENS_THREADS", "3")
    assert threads.choose(10) == 3
    monkeypatch.setenv("MEMLENS_THREADS", "zero")
    with pytest.raises(ValueError, match="MEMLENS_THREADS must be a positive int"):
        threads.choose(10)
    monkeypatch.delenv("MEMLENS_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose(10) is None  # leave PyTorch's setting alone
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(3)  # an explicit call after memlens was imported
    assert threads.choose(10) is None
    with threads.policy(10):
        assert torch.get_num_threads() == 3


def test_train_runs_small_models_single_threaded(policy_env, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setitem(threads._state, "initial", 2)
    seen = []

    class Watched(ml.SparseFeatures):  # infinite data: a batch is drawn inside every step
        def batches(self, *args, **kwargs):
            for b in super().batches(*args, **kwargs):
                seen.append(torch.get_num_threads())
                yield b

    ml.train(Bottleneck(5, 2), Watched(5, 0.5), steps=3, batch_size=8, progress=False)
    assert set(seen) == {1} and len(seen) >= 3 and torch.get_num_threads() == 2


def test_other_busy_cores_sees_a_competitor_but_not_itself():
    spin = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"]
    )
    try:
        time.sleep(0.5)
        busy = threads.other_busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 0.6


def test_other_busy_cores_leaves_out_this_process(monkeypatch):
    """While a thread of this process spins, the measure subtracts exactly this process's CPU
    time, read here from an independent clock (``os.times``), from the machine's busy time."""
    samples = []
    real = threads._busy_jiffies

    def spy():
        sample = real()
        samples.append((sample, os.times()))
        return sample

    monkeypatch.setattr(threads, "_busy_jiffies", spy)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = threads.other_busy_cores(2.0)
    finally:
        stop.set()
        spinner.join()
    ((b0, t0, m0), o0), ((b1, t1, m1), o1) = samples
    elapsed = t1 - t0  # jiffies per CPU
    own = (o1.user + o1.system - o0.user - o0.system) * os.sysconf("SC_CLK_TCK")  # jiffies
    # on a busy machine the spinner gets a small share; 10 jiffies (0.05 of a core) is plenty
    assert own >= 10, "the spinning thread did not run: nothing to leave out"
    assert m1 - m0 == pytest.approx(own, abs=3)  # what it subtracts is this process's time
    everyone = (b1 - b0) / elapsed
    if everyone - own / elapsed > 0:  # (not clipped at 0) this process's share is left out ...
        assert busy == pytest.approx(everyone - own / elapsed, abs=3 / elapsed)
        assert busy < everyone - 7 / elapsed  # ... so the spinning thread is not someone else


def test_other_busy_cores_subtracts_this_process(monkeypatch):
    """Over the window: all CPUs were busy 150 jiffies of 100 per CPU, 60 of them this
    process's: others kept (150 - 60) / 100 = 0.9 cores busy."""
    samples = iter([(1000.0, 5000.0, 300.0), (1150.0, 5100.0, 360.0)])
    monkeypatch.setattr(threads, "_busy_jiffies", lambda: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.other_busy_cores() == pytest.approx(0.9)


def test_help_imports_neither_torch_nor_transformer_lens():
    code = (
        "import sys\nfrom memlens.cli import main\n"
        "for argv in (['--help'], ['sweep', '--help'], ['temper', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
