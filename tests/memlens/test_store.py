"""The sweep store (issue 11 §3-4): one writer at a time, complete lines, recovery from torn
tables, bad checkpoints and a crash during the first config write, the umask, --add-probes,
and folders written by memlens 0.1.

Every recovery is checked against an uninterrupted run of the same sweep: the same table, timing
fields aside."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import memlens
from memlens import sweeps
from memlens.sweeps.store import StoreWarning, SweepBusy, SweepStore

DATA = Path(__file__).parent / "data"
TASK = {"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 64}
TRAIN = {"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2}
GRID = {"T": [3, 10, 30], "seed": [0, 1]}
KW = dict(task=TASK, train=TRAIN, probes=("dimensionality",), progress=False)
TIMING = ("group_seconds", "train_seconds")
ENV = dict(os.environ)


def run(out, grid=GRID, **kw):
    return memlens.sweep("bottleneck", grid, out=out, **{**KW, **kw})


def table(out) -> list[dict]:
    """The rows of ``out/results.jsonl`` by cell, timing fields dropped."""
    rows = [json.loads(x) for x in (Path(out) / "results.jsonl").read_text().splitlines()]
    return sorted(
        ({k: v for k, v in r.items() if k not in TIMING} for r in rows), key=lambda r: r["key"]
    )


def assert_same_table(a, b):
    ta, tb = table(a), table(b)
    assert [r["key"] for r in ta] == [r["key"] for r in tb]
    for ra, rb in zip(ta, tb, strict=True):
        assert set(ra) == set(rb)
        for k in ra:
            if isinstance(ra[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), k
            elif k not in ("checkpoint_sha256", "checkpoint_bytes"):
                assert ra[k] == rb[k], k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the sweep every recovery is compared with."""
    out = tmp_path_factory.mktemp("ref") / "sw"
    run(out)
    return out


def copy_of(reference, tmp_path) -> Path:
    out = tmp_path / "sw"
    shutil.copytree(reference, out)
    return out


# ----------------------------------------------------------------------------- one writer
def _script(out, **kw) -> str:
    args = {**KW, **kw}
    return (
        "import memlens\n"
        f"memlens.sweep('bottleneck', {GRID!r}, out={str(out)!r}, "
        + ", ".join(f"{k}={v!r}" for k, v in args.items())
        + ")\n"
    )


@pytest.mark.slow  # two fresh processes: about 40 s on a loaded 2-core machine
def test_two_identical_sweeps_started_together_end_with_one_row_per_cell(tmp_path):
    out = tmp_path / "sw"
    argv = [sys.executable, "-m", "memlens.cli", "sweep", "--model", "bottleneck"]
    argv += ["--preset", "smoke", "--out", str(out), "--T", "3,10,30", "--seeds", "0,1"]
    argv += ["--steps", "40", "--probes", "dimensionality", "--no-progress"]
    procs = [subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    rows = table(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 6  # every cell exactly once: no duplicate, none lost


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "sw"
    with SweepStore(out).locked():
        p = subprocess.run(
            [sys.executable, "-c", _script(out, lock_timeout=0)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        holder = json.loads((out / ".lock.holder").read_text())
    assert p.returncode != 0
    assert "SweepBusy" in p.stderr and f"locked by pid {os.getpid()}" in p.stderr
    assert f"on host {socket.gethostname()}" in p.stderr and "command:" in p.stderr
    assert holder["pid"] == os.getpid()
    assert not (out / "config.json").exists()  # the refused writer wrote nothing
    assert not (out / ".lock.holder").exists()  # the holder record goes with the lock


def test_a_waiting_writer_gives_up_after_its_timeout(tmp_path):
    out = tmp_path / "sw"
    with SweepStore(out).locked():
        t0 = time.perf_counter()
        with pytest.raises(SweepBusy, match=r"still locked by pid \d+ .* after 0.5 s"):
            with SweepStore(out).locked(timeout=0.5, verbose=False):
                pass
        assert time.perf_counter() - t0 >= 0.5
    with SweepStore(out).locked(timeout=0):  # released: the next writer gets it at once
        pass


# ----------------------------------------------------------------------------- crashes
@pytest.mark.slow  # a fresh process, killed, then resumed: about 45 s on a loaded machine
def test_kill_9_midway_then_resume_loses_nothing(tmp_path):
    out = tmp_path / "sw"
    long = {**TRAIN, "steps": 800}  # long enough that the kill lands in the second group
    script = _script(out, train=long)
    ref = tmp_path / "ref"  # the same sweep, uninterrupted
    run(ref, train=long)
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    table_path = out / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if table_path.exists() and table_path.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = table_path.read_text()
    complete = before[: before.rfind("\n") + 1]
    assert 0 < complete.count("\n") < 6, "the kill should land between the first and last group"
    rows = run(out, train=long)
    assert len(rows) == 6
    assert table_path.read_text().startswith(complete)  # finished groups kept, not redone
    assert_same_table(out, ref)


def test_truncated_results_jsonl_is_recovered(tmp_path, reference):
    out = copy_of(reference, tmp_path)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[:-60])  # the last row torn mid-write
    with pytest.warns(StoreWarning, match=r"results.jsonl line 6: torn last line"):
        rows = run(out)
    assert len(rows) == 6
    assert_same_table(out, reference)


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip a byte"])
def test_bad_checkpoint_is_detected_and_its_group_recomputed(tmp_path, reference, damage):
    out = copy_of(reference, tmp_path)
    ckpt = out / "checkpoints" / "group-001.pt"
    data = ckpt.read_bytes()
    if damage == "truncate":
        ckpt.write_bytes(data[: len(data) // 2])
        match = r"group-001.pt is \d+ bytes, but \d+ were written"
    elif damage == "delete":
        ckpt.unlink()
        match = "group-001.pt is missing"
    else:
        ckpt.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
        match = "group-001.pt does not match the sha256"
    with pytest.warns(StoreWarning, match=match + r".*recomputing its group"):
        run(out)
    assert_same_table(out, reference)
    for r in table(out):  # every row's checkpoint is sound again, and loads
        assert SweepStore(out).checkpoint_problem(r) is None
    model, _, _ = sweeps.load_cell(out, table(out)[-1])
    assert model.n_instances == 1


def _kill_during_first_config_write(out) -> subprocess.CompletedProcess:
    """Run the sweep in a process that SIGKILLs itself while config.json's temp file is being
    synced, i.e. between writing it and renaming it into place."""
    code = (
        "import os, signal\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    if '.config.json.' in os.readlink(f'/proc/self/fd/{fd}'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(fd)\n"
        "os.fsync = fsync\n" + _script(out)
    )
    return subprocess.run([sys.executable, "-c", code], env=ENV, timeout=300)


def test_kill_during_the_first_config_write_is_recovered(tmp_path, reference):
    out = tmp_path / "sw"
    p = _kill_during_first_config_write(out)
    assert p.returncode == -signal.SIGKILL
    assert not (out / "config.json").exists()
    assert list(out.glob(".config.json.*.tmp"))  # the orphan the crash left
    with pytest.warns(StoreWarning, match="removed 1 unfinished temporary file"):
        rows = run(out)
    assert len(rows) == 6 and not list(out.glob(".*.tmp"))
    assert_same_table(out, reference)


def test_a_truncated_config_is_rewritten(tmp_path, reference):
    out = copy_of(reference, tmp_path)
    cfg = (out / "config.json").read_text()
    (out / "config.json").write_text(cfg[: len(cfg) // 2])
    with pytest.warns(StoreWarning, match="config.json is unreadable.*rewrote it"):
        run(out)
    assert json.loads((out / "config.json").read_text()) == json.loads(cfg)
    assert_same_table(out, reference)


def test_orphan_tmp_files_are_removed(tmp_path, reference):
    out = copy_of(reference, tmp_path)
    (out / ".results.jsonl.x1y2.tmp").write_text('{"half": ')
    (out / "checkpoints" / ".group-000.pt.abcd.tmp").write_bytes(b"\0" * 10)
    with pytest.warns(StoreWarning, match="removed 2 unfinished temporary file"):
        run(out)
    assert not list(out.rglob("*.tmp"))
    assert_same_table(out, reference)


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        run(tmp_path / "sw", grid={"T": [3]}, train={**TRAIN, "steps": 5})
    finally:
        os.umask(old)
    files = ["config.json", "results.jsonl", "checkpoints/group-000.pt", ".lock"]
    assert {f: oct((tmp_path / "sw" / f).stat().st_mode & 0o777) for f in files} == {
        f: oct(mode) for f in files
    }


def test_appends_add_complete_lines_without_rewriting(tmp_path):
    path = tmp_path / "t.jsonl"
    memlens.io.append_jsonl(path, [{"a": 1}])
    inode = path.stat().st_ino
    memlens.io.append_jsonl(path, [{"a": 2, "b": float("nan")}, {"a": 3}])
    assert path.stat().st_ino == inode  # appended in place, not replaced by a rewrite
    assert path.read_text() == '{"a": 1}\n{"a": 2, "b": null}\n{"a": 3}\n'


def test_add_probes_records_them_without_changing_the_sweep(tmp_path, reference):
    out = tmp_path / "sw"
    run(out, probes=())
    identity = {k: v for k, v in json.loads((out / "config.json").read_text()).items()}
    rows = sweeps.add_probes(out, ["dictionary"], progress=False)
    assert all("dictionary.coverage" in r for r in rows)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["added_probes"] == ["dictionary"]
    assert {k: v for k, v in cfg.items() if k != "added_probes"} == {
        k: v for k, v in identity.items() if k != "added_probes"
    }
    # the original command still resumes; a cell it reruns gets the added probe too
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[: text.rstrip("\n").rfind("\n") + 1])
    rows = run(out, probes=())
    assert len(rows) == 6 and all("dictionary.coverage" in r for r in rows)


def test_duplicate_rows_warn_and_keep_one_per_cell(tmp_path, reference):
    out = copy_of(reference, tmp_path)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines + lines[:2]))
    with pytest.warns(StoreWarning, match="2 duplicate row"):
        _, rows = sweeps.read_results(out)
    assert len(rows) == 6 == len({r["key"] for r in rows})
    with pytest.warns(StoreWarning, match="duplicate"):
        rep = sweeps.report(out, tmp_path / "fig")
    assert "6 of 6 finished" in Path(rep["summary"]).read_text()


# ----------------------------------------------------------------------------- memlens 0.1
def test_a_memlens_0_1_folder_loads_reports_and_resumes(tmp_path):
    """``data/sweep_v0_1`` was written by memlens 0.1 (``data/make_sweep_v0_1.py``): no ``l1``
    train key, no checkpoint digests, recipes stored as ``cells``."""
    out = tmp_path / "old"
    shutil.copytree(DATA / "sweep_v0_1", out)
    old_rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    cfg, rows = sweeps.read_results(out)
    assert cfg["train"]["l1"] == 0.0 and len(rows) == 6
    model, train, _ = sweeps.load_cell(out, rows[0])
    assert model.n_instances == 1 and len(train) == rows[0]["T"]
    assert "6 of 6 finished" in Path(sweeps.report(out)["summary"]).read_text()
    # the 0.1 command resumes it: nothing to redo ...
    kw = dict(
        task={"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 64},
        train={"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2},
        probes=("dimensionality",),
        out=out,
        progress=False,
    )
    grid = {"T": [3, 8, 20], "seed": [0, 1]}
    assert len(memlens.sweep("bottleneck", grid, **kw)) == 6
    assert [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] == old_rows
    # ... and a partial one is finished, the rerun group matching what 0.1 computed
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[: text.rstrip("\n").rfind("\n") + 1])
    rows = memlens.sweep("bottleneck", grid, **kw)
    new = {r["key"]: r for r in rows}
    for r in old_rows:
        assert new[r["key"]]["test_loss"] == pytest.approx(r["test_loss"], rel=1e-3, abs=1e-5)


def test_a_memlens_0_1_folder_with_added_probes_says_how_to_migrate(tmp_path):
    out = tmp_path / "old"
    shutil.copytree(DATA / "sweep_v0_1", out)
    with pytest.raises(ValueError, match="added later by `memlens report --add-probes`"):
        memlens.sweep(
            "bottleneck",
            {"T": [3, 8, 20], "seed": [0, 1]},
            task={"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 64},
            train={"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2},
            probes=(),
            out=out,
            progress=False,
        )


def test_a_setting_added_since_a_sweep_was_recorded_keeps_its_recorded_value(tmp_path, monkeypatch):
    """A spec key a model gained after a sweep was recorded (for real: ``data_version``, whose
    absence means the 0.1 data) takes the value that reproduces the recorded data, both when the
    folder is read and when its command is rerun. Simulated with n_test, as if it were new."""
    from memlens.sweeps import records

    monkeypatch.setattr(records, "LEGACY_SPEC", {"n_test": 64})
    out = tmp_path / "old"
    shutil.copytree(DATA / "sweep_v0_1", out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["task"]["n_test"]  # recorded before the key existed
    (out / "config.json").write_text(json.dumps(cfg))
    config, _ = sweeps.read_results(out)
    assert config["task"]["n_test"] == 64  # not today's default, 2048
    before = (out / "results.jsonl").read_text()
    rows = memlens.sweep(
        "bottleneck",
        {"T": [3, 8, 20], "seed": [0, 1]},
        task={"n_features": 20, "sparsity": 0.8, "d_hidden": 2},  # the command, without n_test
        train={"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2},
        probes=("dimensionality",),
        out=out,
        progress=False,
    )
    assert len(rows) == 6 and (out / "results.jsonl").read_text() == before  # resumed, not redone
