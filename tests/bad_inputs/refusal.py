"""The one check every bad-input row makes, and the row type the tables are lists of.

A row is refused correctly when the call raises the expected exception type, its message names the
field (a regex), no work started (no training step, no SGLD step, no sweep group) and no file in
``tmp_path`` was created, changed or removed. :func:`assert_refused` checks all four; a table is a
module-level list of :class:`Case` rows that a test parametrizes over (extend it with ``+=``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

__all__ = ["Case", "WorkStarted", "WORK", "assert_refused", "no_work", "snapshot", "params"]

#: the functions where work starts, as (module, attribute): patched to raise ``WorkStarted``
WORK: tuple[tuple[str, str], ...] = (
    ("memlens.training", "step_once"),  # one optimizer step of memlens.train
    ("memlens.sampling.llc", "sample"),  # an SGLD run of temper / estimate_llc
    ("memlens.sampling.calibration", "sample"),  # an SGLD run of the step-size calibration
    ("memlens.sweeps.cells", "run_group"),  # a sweep group's training
)


class WorkStarted(BaseException):  # noqa: N818 (a BaseException: no ``except Exception`` hides it)
    """Raised by a patched work function: the call did work before refusing its input."""


@contextlib.contextmanager
def no_work(calls: list[str]) -> Iterator[None]:
    """Every function in :data:`WORK` records its call in ``calls`` and raises ``WorkStarted``."""
    import importlib

    with contextlib.ExitStack() as stack:
        for mod_name, attr in WORK:
            mod = importlib.import_module(mod_name)

            def fake(*a: Any, _n: str = f"{mod_name}.{attr}", **k: Any) -> Any:
                calls.append(_n)
                raise WorkStarted(f"{_n} ran before the bad input was refused")

            stack.enter_context(mock.patch.object(mod, attr, fake))
        yield


def snapshot(folder: Path | None) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file and folder under ``folder``."""
    if folder is None or not Path(folder).exists():
        return {}
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def assert_refused(
    fn: Callable[[], Any],
    exc: type[BaseException] | tuple[type[BaseException], ...],
    field: str,
    tmp_path: Path | None = None,
) -> BaseException:
    """Call ``fn()`` and check that it was refused properly:

    * it raises ``exc`` (a type or a tuple of types);
    * the message matches the regex ``field`` (the field's name, and where useful its value);
    * no work started (see :data:`WORK`);
    * nothing under ``tmp_path`` was created, changed or removed.

    Returns the exception, for further checks.
    """
    calls: list[str] = []
    before = snapshot(tmp_path)
    with no_work(calls), pytest.raises(exc) as info:
        fn()
    assert not calls, f"work started before the refusal: {calls}"
    msg = str(info.value)
    assert re.search(field, msg), f"the message does not name {field!r}: {msg!r}"
    after = snapshot(tmp_path)
    assert after == before, (
        f"files changed under {tmp_path}: created {sorted(set(after) - set(before))}, removed "
        f"{sorted(set(before) - set(after))}, modified "
        f"{sorted(k for k in set(after) & set(before) if after[k] != before[k])}"
    )
    return info.value


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(tmp_path)`` must raise ``exc`` with a message matching ``field``.
    ``setup(tmp_path)``, run before the snapshot, prepares files the call reads (a corrupt
    checkpoint, an existing file to refuse overwriting)."""

    id: str
    call: Callable[[Path], Any]
    exc: type[BaseException] | tuple[type[BaseException], ...]
    field: str
    setup: Callable[[Path], Any] | None = None

    def check(self, tmp_path: Path) -> BaseException:
        if self.setup is not None:
            self.setup(tmp_path)
        return assert_refused(lambda: self.call(tmp_path), self.exc, self.field, tmp_path)


def params(cases: list[Case]) -> list:
    """``pytest.param`` per row, with its id; duplicate ids are a mistake in the table."""
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate row ids: {dup}"
    return [pytest.param(c, id=c.id) for c in cases]
