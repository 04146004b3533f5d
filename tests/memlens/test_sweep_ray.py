"""Sweeps through the Ray backend (issue 14): the same table as the local backend, resume after the
driver is killed, Ray's retries, failed cells recorded and reported, the device of a task.

One local Ray cluster (``ray.init(num_cpus=2)``) serves the whole module; the driver killed in a
subprocess joins it by address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import memlens
from memlens.registry import get_bundle
from memlens.sweeps import backends as RB
from memlens.sweeps import report, run_group
from memlens.sweeps.backends import LocalBackend, SweepFailed
from memlens.threads import PARALLEL_WORK

TIMING = {"group_seconds", "train_seconds"}
# 4 groups of 4 cells (lr cannot be packed together), each long enough to kill the driver midway
KILL_GRID = {"T": [3, 6, 12, 24], "seed": [0], "lr": [0.01, 0.014, 0.018, 0.022]}
KILL_TRAIN = {"steps": 800, "warmup": 5, "weight_decay": 1e-2}


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster for the module; yields its address (``HOST:PORT``)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'memlens[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=RB.LOCAL_OBJECT_STORE,
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _raw_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def test_ray_sweep_gives_the_local_table_cell_for_cell(cluster, tmp_path):
    local = memlens.sweep("bottleneck", preset="smoke", out=tmp_path / "local", progress=False)
    ray_rows = memlens.sweep(
        "bottleneck", preset="smoke", out=tmp_path / "ray", progress=False, backend="ray"
    )
    assert len(local) == 8 and [r["key"] for r in ray_rows] == [r["key"] for r in local]
    # everything but the timing: losses, probes, weight norms and the checkpoints' sha256
    assert _strip(ray_rows) == _strip(local)
    assert {r["status"] for r in ray_rows} == {"ok"} and {r["device"] for r in ray_rows} == {"cpu"}


def _driver_script(out: Path, address: str) -> str:
    return textwrap.dedent(
        f"""
        import memlens
        memlens.sweep("bottleneck", {KILL_GRID!r}, preset="smoke", train={KILL_TRAIN!r},
                      probes=(), out={str(out)!r}, progress=False, backend="ray",
                      address={address!r})
        """
    )


@pytest.mark.slow
def test_killing_the_driver_midway_and_rerunning_loses_no_cell_and_duplicates_none(
    cluster, tmp_path
):
    out = tmp_path / "sw"
    n_cells = len(KILL_GRID["T"]) * len(KILL_GRID["lr"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _driver_script(out, cluster)], env=env)
    table = out / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if table.exists() and len(_raw_lines(out)) >= 4:  # at least one group written
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed midway"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = {r["key"]: r for r in _raw_lines(out)}
    assert 4 <= len(before) < n_cells, f"killed after {len(before)} of {n_cells} cells"

    rows = memlens.sweep(
        "bottleneck",
        KILL_GRID,
        preset="smoke",
        train=KILL_TRAIN,
        probes=(),
        out=out,
        progress=False,
        backend="ray",
        address=cluster,
    )
    raw = _raw_lines(out)
    assert len(raw) == n_cells and len({r["key"] for r in raw}) == n_cells  # none lost, none twice
    assert len(rows) == n_cells and all(r["status"] == "ok" for r in rows)
    # the cells finished before the kill were kept as they were, not recomputed
    after = {r["key"]: r for r in raw}
    assert all(after[k] == r for k, r in before.items())
    # and a resumed cell equals the same cell run by the local backend from scratch
    one = rows[-1]
    alone = memlens.sweep(
        "bottleneck",
        {"T": [one["T"]], "seed": [0], "lr": [one["cell"]["lr"]]},
        preset="smoke",
        train=KILL_TRAIN,
        probes=(),
        out=tmp_path / "alone",
        progress=False,
    )
    # a group of one cell vs one of four: packing adds float rounding, nothing more
    assert alone[0]["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)


class Flaky:
    """A group's work that raises on its first ``fails`` tries (counted in files under ``tally``,
    shared by the Ray workers), then runs the group."""

    def __init__(self, tally: Path, fails: int, groups=None):
        self.tally, self.fails, self.groups = str(tally), fails, groups

    def __call__(self, job):
        if self.groups is None or job.index in self.groups:
            mark = Path(self.tally) / f"group-{job.index}"
            tries = len(mark.read_text()) if mark.exists() else 0
            mark.write_text("x" * (tries + 1))
            if tries < self.fails:
                raise RuntimeError(f"injected fault in group {job.index}, try {tries + 1}")
        return run_group(job)


def _tries(tally: Path) -> dict[int, int]:
    return {int(p.name.split("-")[1]): len(p.read_text()) for p in tally.iterdir()}


def _backend(kind: str, work):
    return LocalBackend(work=work) if kind == "local" else RB.RayBackend(work=work)


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_group_that_raises_once_is_retried_and_finishes(kind, cluster, tmp_path):
    tally = tmp_path / "tally"
    tally.mkdir()
    rows = memlens.sweep(
        "bottleneck",
        preset="smoke",
        probes=(),
        out=tmp_path / "sw",
        progress=False,
        backend=_backend(kind, Flaky(tally, fails=1)),
    )
    assert _tries(tally) == {0: 2, 1: 2}  # each group failed once and ran again
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert len(_raw_lines(tmp_path / "sw")) == 8  # the failed tries left no row


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_group_that_fails_twice_is_recorded_reported_and_retried_by_the_rerun(
    kind, cluster, tmp_path
):
    tally, out = tmp_path / "tally", tmp_path / "sw"
    tally.mkdir()
    kw = {"preset": "smoke", "out": out, "progress": False}
    with pytest.raises(SweepFailed, match=r"1 of 2 groups \(4 cells\) failed.*injected fault"):
        memlens.sweep("bottleneck", **kw, backend=_backend(kind, Flaky(tally, 99, groups={1})))
    assert _tries(tally) == {1: 2}  # tried twice, no more
    raw = _raw_lines(out)
    assert len(raw) == 8
    failed = [r for r in raw if r["status"] == "failed"]
    assert sorted(r["T"] for r in failed) == sorted(
        c["spec"]["T"] for c in _group_cells(1)
    ) and all("RuntimeError: injected fault in group 1, try 2" in r["error"] for r in failed)
    assert all("test_loss" not in r for r in failed)

    rep = report(out)
    summary = Path(rep["summary"]).read_text()
    assert "FAILED: 4 of 8 cells" in summary and "injected fault in group 1" in summary
    assert "PARTIAL: 4 of 8 cells finished" in summary

    # the rerun retries the failed group (with a warning naming it), keeps the finished cells
    done_before = {r["key"]: r for r in raw if r["status"] == "ok"}
    with pytest.warns(memlens.sweeps.StoreWarning, match="group 1 .*failed on an earlier run"):
        rows = memlens.sweep("bottleneck", **kw, backend=_backend(kind, run_group))
    raw = _raw_lines(out)
    assert len(raw) == 8 and all(r["status"] == "ok" for r in raw) and len(rows) == 8
    assert all({r["key"]: r for r in raw}[k] == r for k, r in done_before.items())


def _group_cells(index: int) -> list[dict]:
    from memlens.sweeps.grid import make_cells, normalise, plan_groups

    b = get_bundle("bottleneck")
    p = b.preset("smoke")
    g, t, tr = normalise(b, p["grid"], p["task"], p["train"])
    return plan_groups(b, make_cells(g, t, tr))[index]["cells"]


# ---------------------------------------------------------------- no cluster needed
@pytest.mark.user_errors
def test_without_ray_the_backend_says_what_to_install_before_any_file(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "sw"
    with pytest.raises(ImportError, match=r"pip install 'memlens\[ray\]'") as err:
        memlens.sweep("bottleneck", preset="smoke", out=out, progress=False, backend="ray")
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)  # the CLI's one line
    assert not out.exists()


@pytest.mark.user_errors
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"backend": "ray", "address": "localhost"}, "address"),
        ({"backend": "ray", "address": "host:99999"}, "port"),
        ({"backend": "ray", "address": 6379}, "address"),
        ({"backend": "local", "address": "auto"}, "address"),
    ],
)
def test_bad_addresses_are_refused_before_any_file(kw, field, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'memlens[ray]')")
    out = tmp_path / "sw"
    with pytest.raises(ValueError, match=field):
        memlens.sweep("bottleneck", preset="smoke", out=out, progress=False, **kw)
    assert not out.exists()


@pytest.mark.user_errors
def test_the_cli_entry_point_builds_a_ray_backend_or_refuses():
    pytest.importorskip("ray", reason="Ray is not installed")
    b = RB.make_backend("ray", address="auto")
    assert isinstance(b, RB.RayBackend) and b.address == "auto"
    assert RB.make_backend("ray").address is None  # start a local cluster
    with pytest.raises(ValueError, match="needs backend 'ray'"):
        RB.make_backend("local", address="auto")
    with pytest.raises(ValueError, match="address must be"):
        RB.make_backend("ray", address="nowhere")


def test_a_task_trains_on_cuda_exactly_when_ray_gave_it_a_gpu(monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    job = memlens.sweeps.GroupJob("bottleneck", 0, tuple(_group_cells(0)), (), "cpu", True)
    seen = []

    def work(j):  # records what the task would train on, and the threads it was given
        import torch

        seen.append((j.device, j.progress, torch.get_num_threads(), os.environ["MEMLENS_THREADS"]))
        raise FloatingPointError("stop here")  # a divergence: returned as a failure, not raised

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])  # Ray assigned this task GPU 0
    assert isinstance(RB._task(job, 1, work), RB.GroupFailure)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    RB._task(job, 2, work)
    assert seen == [("cuda", False, 1, "1"), ("cpu", False, 2, "2")]


def test_a_task_asks_for_a_gpu_when_the_cluster_has_one(monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    backend = RB.RayBackend()
    job = memlens.sweeps.GroupJob("bottleneck", 0, tuple(_group_cells(0)))
    node = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: node)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert backend._resources([job]) == (16, 1)
    assert RB.RayBackend(gpus=0)._resources([job]) == (16, 0)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert backend._resources([job]) == (16, 0)
    cuda_job = memlens.sweeps.GroupJob("bottleneck", 0, tuple(_group_cells(0)), device="cuda")
    with pytest.raises(ValueError, match="needs GPUs in the cluster"):
        backend._resources([cuda_job])


def test_a_task_asks_for_the_cpus_the_thread_policy_gives_its_work():
    cells = _group_cells(0)
    T_max = max(c["spec"]["T"] for c in cells)
    n_features = cells[0]["spec"]["n_features"]  # the bottleneck's width is its input width
    job = memlens.sweeps.GroupJob("bottleneck", 0, tuple(cells))
    assert RB.group_work(job) == T_max * len(cells) * n_features
    assert RB.task_cpus(PARALLEL_WORK - 1, cap=16) == 1  # one thread below the policy's threshold
    assert RB.task_cpus(PARALLEL_WORK, cap=16) == 2
    assert RB.task_cpus(5 * PARALLEL_WORK, cap=16) == 6
    assert RB.task_cpus(100 * PARALLEL_WORK, cap=4) == 4
