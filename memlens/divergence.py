"""Numerical faults of a training run: :class:`Diverged` (a NaN/inf loss or weight, after
restoring the last good weights) and a warning when a finite loss explodes (:class:`Guard`)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from memlens.hooked import HookedToyModel

__all__ = ["Diverged", "Guard", "EXPLOSION_FACTOR"]


class Diverged(FloatingPointError):
    """Training produced a NaN/inf loss (or weight): the step, the (packed) instances, and the
    step count whose weights were restored. A sweep renames the instances as its cells."""

    def __init__(self, what: str, step: int, instances: list[int], restored_step: int):
        self.what, self.step, self.instances = what, step, list(instances)
        self.restored_step = restored_step
        super().__init__(self.describe(f"instance(s) {self.instances}"))

    def describe(self, where: str) -> str:
        """The message, with ``where`` naming what diverged (instances, or a sweep's cells)."""
        restored = (
            "restored to their initial values"
            if self.restored_step == 0
            else f"restored to those after {self.restored_step} steps (the last finiteness "
            "check that passed)"
        )
        return (
            f"{self.what} at step {self.step} in {where}; the model's weights were {restored}; "
            "lower lr or check the data"
        )


#: a finite loss above this many times its starting value (per instance) warns once
EXPLOSION_FACTOR = 1e3


class Guard:
    """Numerical faults of one training run, checked at every finiteness check (one host sync):

    * a non-finite loss (or weight) raises ``FloatingPointError`` naming the first bad step and
      the instances, after restoring the weights saved at the last check that found everything
      finite (a copy of the parameters, kept at each check: cheap next to 100 steps);
    * a finite loss that passes ``EXPLOSION_FACTOR`` x its starting value warns once
      (``RuntimeWarning``) naming the step and the instances.
    """

    def __init__(self, model: HookedToyModel):
        self.model = model
        self.checked = 0  # steps checked so far
        self.good = self._copy()  # weights at the last good check (step 0: the initial ones)
        self.good_step = 0
        self.warned = False

    def _copy(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def _restore(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.good[n])

    def check(self, history: Tensor, stop: int) -> None:
        start, window = self.checked, history[self.checked : stop]
        bad = ~torch.isfinite(window)
        weights_ok = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if bool(bad.any()) or not weights_ok:
            if bool(bad.any()):
                row = int(bad.any(1).nonzero()[0])
                step, insts = start + row, bad[row].nonzero().flatten().tolist()
                what = "training loss became NaN/inf"
            else:
                step = stop - 1
                insts = [
                    i
                    for i in range(self.model.n_instances)
                    if not all(bool(torch.isfinite(p[i]).all()) for p in self.model.parameters())
                ]
                what = "weights became NaN/inf"
            self._restore()
            raise Diverged(what, step, insts, self.good_step)
        if not self.warned:
            self._warn_explosion(history, start, stop)
        self.checked, self.good, self.good_step = stop, self._copy(), stop

    def _warn_explosion(self, history: Tensor, start: int, stop: int) -> None:
        first = history[0]
        over = (history[start:stop] > EXPLOSION_FACTOR * first) & (first > 0)
        if bool(over.any()):
            row = int(over.any(1).nonzero()[0])
            insts = over[row].nonzero().flatten().tolist()
            peak = float(history[start + row, insts].max())
            self.warned = True
            warnings.warn(
                f"training loss exploded: at step {start + row} it passed {EXPLOSION_FACTOR:g}x "
                f"its starting value in instance(s) {insts} (up to {peak:.3g}, from "
                f"{float(first[insts].max()):.3g}); lower lr",
                RuntimeWarning,
                stacklevel=6,  # past _warn_explosion, check, _run, train, its thread wrapper
            )
