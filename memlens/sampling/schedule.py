"""When the sampler acts between its steps: how often it evaluates the diagnostic loss, and the
next draw at which anything happens (the steps between are one block, one kernel call)."""

from __future__ import annotations

import math

__all__ = ["eval_schedule", "next_event"]


def next_event(plan, k: int, eval_draw: int, probing: bool, swap, span: int) -> int:
    """The first draw from ``k`` on after which the loop must act: an evaluation, a probe or kept
    draw, a swap proposal (``swap.maybe`` fires once ``step - last >= every``; with
    ``swap.at_evals`` only at evaluations), the end of burn-in or of the run; at most ``span`` draws
    on. The draws between are one block of steps."""
    e = min(plan.draws - 1, eval_draw, k + span - 1)
    if k < plan.burnin:
        e = min(e, plan.burnin - 1)
    if probing:
        first = max(k, plan.burnin)
        e = min(e, first + (-(first - plan.burnin)) % plan.probe_every)
    if swap is not None and not swap.at_evals:  # after draw j the step count is (j + 1) · thin
        e = min(e, max(k, -(-(swap.last + swap.every) // plan.thin) - 1))
    return e


def eval_schedule(setup, batch_size: int | None, thin: int, draws: int, burnin: int) -> int:
    """Draws between evaluations of the diagnostic loss: every draw with full-batch gradients
    (free); with minibatches, as rarely as keeps its cost near a tenth of sampling, but at least
    40 evaluations per chain after burn-in."""
    if batch_size is None and setup.eval_is_full:
        return 1
    m = len(setup.eval_set)
    b = batch_size or len(setup.data)
    cost = m / (3 * b * thin)  # one forward on m points vs one draw interval (forward + backward)
    every = math.ceil(cost / 0.1)
    return max(1, min(every, (draws - burnin) // 40))
