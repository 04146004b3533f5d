"""The sweep folder as a small, safe database.

Layout of ``out/``:

* ``config.json``: the sweep (model, grid, task, train, probes: its *identity*), the packing plan's
  size, and ``added_probes`` (probes ``report --add-probes`` ran later; not part of the identity);
* ``results.jsonl``: one row per finished cell (``status: "ok"``; rows of memlens 0.1 have no
  status and are finished too); each row records its group's checkpoint with its size and sha256.
  A cell whose group failed twice has a row with ``status: "failed"`` and the ``error``, and no
  results; the next run of the sweep drops those rows and retries their groups;
* ``checkpoints/group-NNN.pt``: each packed model with the data recipe of every instance;
* ``.lock`` (and ``.lock.holder``: who holds it): one writer at a time.

Guarantees: a second writer waits for the lock (or is refused after ``lock_timeout`` seconds with a
message naming the holder's pid, host and command). Rows are appended as complete lines in one
write; whole files are replaced atomically. On every run, under the lock, the store drops a torn
or corrupt line (and says so), drops duplicate rows, verifies every checkpoint against its
recorded size and hash, and marks the groups to recompute; a config lost to a crash is rewritten
from the sweep's arguments; orphan ``.tmp`` files are removed. Folders written by memlens 0.1
(``memlens-sweep-v1``) are read with the settings added since filled in by their defaults.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from memlens import io
from memlens.persistence import save
from memlens.sweeps import records
from memlens.sweeps.records import (
    IDENTITY,
    SWEEP_FORMAT,
    StoreWarning,
    canon,
    dedupe,
    is_failed,
    spec_defaults,
    upgrade_config,
    warn_store,
)

__all__ = [
    "SWEEP_FORMAT",
    "IDENTITY",
    "SweepBusy",
    "StoreWarning",
    "SweepStore",
    "upgrade_config",
    "read_results",
    "dedupe",
    "is_failed",
]

ARTEFACTS = {"config.json", "results.jsonl", "checkpoints", ".lock", ".lock.holder"}


class SweepBusy(FileExistsError):
    """Another process holds the sweep folder's lock."""


def read_results(out: str | os.PathLike, failed: bool = False) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a sweep folder: the config in the current format, one row per
    finished cell (torn or corrupt lines and duplicates dropped, with a warning); ``failed=True``
    adds the rows of cells whose group failed (``status: "failed"``, with the ``error``)."""
    store = SweepStore(out)
    raw, problem = store.read_config()
    if raw is None:
        raise FileNotFoundError(problem or f"{out} holds no sweep (no config.json)")
    config = upgrade_config(raw, spec_defaults(raw.get("model", "")))
    rows = store.read_rows()
    return config, rows if failed else [r for r in rows if not is_failed(r)]


class SweepStore:
    """One sweep folder. Reading needs no lock; every write happens inside :meth:`locked`."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.config_path = self.out / "config.json"
        self.table = self.out / "results.jsonl"
        self.checkpoints = self.out / "checkpoints"
        self.lock_path = self.out / ".lock"
        self.holder_path = self.out / ".lock.holder"

    # ---------------------------------------------------------------- read-only checks
    def check_target(self) -> None:
        """Refuse an ``out`` that is a file, or that cannot be created or written (before any
        work and before any file is written)."""
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"out={str(self.out)!r} is a file, not a folder")
        p = self.out
        while not p.exists():
            p = p.parent
        if not p.is_dir():
            raise FileExistsError(f"out={str(self.out)!r}: {p} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"out={str(self.out)!r}: cannot write into {p} (permission denied)")

    def read_config(self) -> tuple[dict | None, str | None]:
        """``(config as stored, None)``, ``(None, None)`` if there is none, or ``(None, problem)``
        if it is unreadable (for example a write cut short by a crash)."""
        if not self.config_path.exists():
            return None, None
        try:
            raw = io.read_json(self.config_path)
        except (OSError, ValueError) as exc:
            return None, f"{self.config_path} is unreadable ({type(exc).__name__}: {exc})"
        if not isinstance(raw, dict) or "model" not in raw:
            return None, f"{self.config_path} is not a sweep config"
        return raw, None

    def foreign_files(self) -> list[str]:
        """Files in ``out`` that no sweep wrote (``out`` is then someone else's folder)."""
        if not self.out.is_dir():
            return []
        return sorted(
            p.name
            for p in self.out.iterdir()
            if p.name not in ARTEFACTS and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        )

    def check_identity(self, stored: Mapping, mine: Mapping) -> None:
        """Refuse to mix tables: ``stored`` (upgraded) and ``mine`` must be the same sweep."""

        def same(k: str) -> bool:
            if k == "probes":  # the order probes are named in changes no result
                return sorted(map(canon, stored.get(k) or [])) == sorted(map(canon, mine[k]))
            return canon(stored.get(k)) == canon(mine[k])

        diff = [k for k in IDENTITY if not same(k)]
        if diff:
            hint = ""
            if "probes" in diff and set(map(canon, mine["probes"])) < set(
                map(canon, stored["probes"])
            ):
                hint = (
                    " (its probes include ones added later by `memlens report --add-probes` of "
                    "memlens 0.1: pass them in probes too, or move them to config.json's "
                    "'added_probes')"
                )
            raise ValueError(
                f"{self.out} holds a different sweep (its {', '.join(diff)} differ{hint}); "
                "refusing to mix tables: pick another out/ or delete that one"
            )

    def read_rows(self, repairing: bool = False) -> list[dict]:
        """The table's rows, one per cell; torn or corrupt lines are dropped with a warning."""
        rows, bad = io.read_jsonl_tolerant(self.table)
        then = "it is dropped and its cell rerun" if repairing else "ignored"
        for lineno, _, why in bad:
            warn_store(f"{self.table} line {lineno}: {why}; {then}")
        return dedupe(rows, f"{self.out}/")

    def _row_keys(self) -> set:
        """The keys of the finished cells (failed rows do not count: nothing was kept of them)."""
        return {r.get("key") for r in io.read_jsonl_tolerant(self.table)[0] if not is_failed(r)}

    def legacy_settings(self, spec_defaults: Mapping) -> dict:
        """The :data:`LEGACY_SPEC` values the sweep recorded here implies (its config predates
        those keys), so that rerunning its command continues it on the same data."""
        raw, _ = self.read_config()
        if raw is None:
            return {}
        task = raw.get("task", {})
        legacy = records.LEGACY_SPEC
        return {k: v for k, v in legacy.items() if k in spec_defaults and k not in task}

    def check_before_lock(self, config: Mapping, spec_defaults: Mapping | None) -> None:
        """Refuse at once, without waiting for the lock, a folder that holds finished cells of a
        different sweep."""
        raw, _ = self.read_config()
        if raw is not None and self._row_keys():
            self.check_identity(upgrade_config(raw, spec_defaults), config)

    def open_sweep(
        self, config: Mapping, keys: set, spec_defaults: Mapping | None, resume: bool
    ) -> dict:
        """Under the lock: make ``out`` hold this sweep, or refuse. Returns the stored config
        (upgraded), whose ``added_probes`` the run honours.

        * the same sweep: resumed (``resume=False`` refuses it);
        * a different sweep with finished cells: refused; one that finished none (it failed or
          was killed before its first group) is replaced, with a warning;
        * no config, or an unreadable one (a write cut short): written from the arguments, if
          every row in the table is a cell of this sweep and no foreign file is there."""
        raw, problem = self.read_config()
        present = self._row_keys()
        if raw is not None:
            stored = upgrade_config(raw, spec_defaults)
            try:
                self.check_identity(stored, config)
            except ValueError:
                if present:
                    raise
                warn_store(
                    f"{self.config_path} held a different sweep that finished no cell; "
                    "replaced it with this one"
                )
                for p in self.checkpoints.glob("group-*.pt"):
                    p.unlink()
                if self.table.exists():  # only failed rows of that sweep
                    self.rewrite_rows([])
                self.write_config(config)
                return dict(config)
            if not resume:
                raise FileExistsError(f"{self.out} already holds this sweep; pass resume=True")
            return stored
        strangers = sorted(k for k in present if k not in keys)
        if strangers or (self.foreign_files() and problem is None):
            what = problem or f"{self.out} holds no sweep config"
            held = (
                f"rows of cells not in this sweep ({strangers[:3]})" if strangers else "other files"
            )
            raise FileExistsError(
                f"{what}, and the folder holds {held}; refusing to write: pick another out/ or "
                "delete that one"
            )
        if problem is not None:
            warn_store(
                f"{problem}; rewrote it from this sweep's arguments (its rows are this sweep's)"
            )
        self.write_config(config)
        return dict(config)

    # ---------------------------------------------------------------- the lock
    def _holder(self) -> str:
        try:
            h = io.read_json(self.holder_path)
            return (
                f"pid {h['pid']} on host {h['host']} (command: {h['command']}; since {h['since']})"
            )
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (no holder record)"

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None, verbose: bool = True) -> Iterator[None]:
        """Hold the folder's exclusive lock for the block. If another process holds it, say who
        and wait, at most ``timeout`` seconds (None: as long as it takes; 0: refuse at once);
        then raise :class:`SweepBusy` naming the holder. A lock dies with its process."""
        from filelock import FileLock, Timeout

        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ValueError(f"lock_timeout must be None or a number >= 0, got {timeout!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), mode=0o666 & ~io.umask())
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder()
            if timeout == 0:
                raise SweepBusy(f"{self.out} is locked by {holder}; refusing to write") from None
            if verbose:
                print(f"memlens: {self.out} is locked by {holder}; waiting", file=sys.stderr)
            try:
                lock.acquire(timeout=-1 if timeout is None else timeout)
            except Timeout:
                raise SweepBusy(
                    f"{self.out} is still locked by {self._holder()} after {timeout} s; "
                    "refusing to write"
                ) from None
        try:
            io.write_json(
                self.holder_path,
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv) or sys.executable,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
            )
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.holder_path.unlink()
            lock.release()

    # ---------------------------------------------------------------- under the lock
    def clean(self) -> None:
        """Remove orphan ``.tmp`` files of writes killed before their rename."""
        gone = io.clean_tmp(self.out) + io.clean_tmp(self.checkpoints)
        if gone:
            names = ", ".join(str(p.relative_to(self.out)) for p in gone)
            warn_store(f"removed {len(gone)} unfinished temporary file(s) in {self.out}: {names}")

    def write_config(self, config: Mapping) -> None:
        io.write_json(self.config_path, config)

    def rewrite_rows(self, rows: Sequence[Mapping]) -> None:
        """Replace the whole table atomically (repairs only; normal growth is by appending)."""
        io.atomic_write_text(self.table, "".join(io.dumps(r, sort_keys=True) + "\n" for r in rows))

    def checkpoint_problem(self, row: Mapping) -> str | None:
        """Why the checkpoint a row points to cannot be trusted, or None if it checks out."""
        rel = row.get("checkpoint")
        if not isinstance(rel, str):
            return "the row names no checkpoint"
        path = self.out / rel
        if not path.is_file():
            return f"{rel} is missing"
        if "checkpoint_sha256" in row:
            size, sha = io.file_digest(path)
            if size != row.get("checkpoint_bytes"):
                return f"{rel} is {size} bytes, but {row.get('checkpoint_bytes')} were written"
            if sha != row["checkpoint_sha256"]:
                return f"{rel} does not match the sha256 recorded when it was written (corrupt)"
            return None
        try:  # a memlens 0.1 row records no digest: the checkpoint must at least load
            io.load_checkpoint(path)
        except (ValueError, FileNotFoundError) as exc:
            return str(exc)
        return None

    def done_groups(self, groups: Sequence[Mapping]) -> set[int]:
        """Repair the table and return the indices of the groups whose every cell has a row and a
        sound checkpoint. Rows of a group that must be recomputed are removed from the table
        (they would point at a checkpoint that is about to be replaced)."""
        raw_rows, bad = io.read_jsonl_tolerant(self.table)
        rows = self.read_rows(repairing=True)
        group_of = {c["key"]: gi for gi, g in enumerate(groups) for c in g["cells"]}
        foreign = [r for r in rows if r.get("key") not in group_of]
        if foreign:
            warn_store(
                f"{self.table}: dropped {len(foreign)} row(s) of cells not in this sweep's grid"
            )
        by_group: dict[int, list[dict]] = {}
        for r in rows:
            if r.get("key") in group_of:
                by_group.setdefault(group_of[r["key"]], []).append(r)
        done, verdicts = set(), {}
        for gi, grp_rows in by_group.items():
            n_cells = len(groups[gi]["cells"])
            failed = [r for r in grp_rows if is_failed(r)]
            if failed:
                warn_store(
                    f"group {gi} ({n_cells} cells) failed on an earlier run "
                    f"({failed[0].get('error', 'no error recorded')}); retrying it"
                )
                continue
            problems = []
            for r in grp_rows:
                rel = r.get("checkpoint")
                if rel not in verdicts:
                    verdicts[rel] = self.checkpoint_problem(r)
                if verdicts[rel]:
                    problems.append(verdicts[rel])
            if problems:
                warn_store(f"{problems[0]}; recomputing its group ({n_cells} cells)")
            elif len(grp_rows) == n_cells:
                done.add(gi)
        keep = [r for r in rows if group_of.get(r.get("key")) in done]
        if bad or len(keep) != len(raw_rows):
            self.rewrite_rows(keep)
        return done

    def save_group(self, index: int, model: Any, recipes: Sequence[Mapping]) -> dict:
        """Write a group's packed model with its recipes; return the fields its rows record."""
        rel = f"checkpoints/group-{index:03d}.pt"
        save(model, self.out / rel, recipes=recipes)
        size, sha = io.file_digest(self.out / rel)
        return {"checkpoint": rel, "checkpoint_bytes": size, "checkpoint_sha256": sha}

    def append(self, rows: Sequence[Mapping]) -> None:
        io.append_jsonl(self.table, list(rows))
