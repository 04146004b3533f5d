"""Replica exchange (parallel tempering) across the temperature ladder.

Every ``swap_every`` SGLD steps, between blocks of :func:`memlens.sampling.sgld.advance`, the
states of neighbouring rungs a, b (same chain, same instance) are proposed for a swap, accepted
with the Metropolis rule on their tempered losses

    min(1, exp((β_a − β_b) (L(w_a) − L(w_b)))),   β = nβ/t,

(the localisation term is the same on every rung and cancels). The losses are those of the whole
training set, or of the fixed evaluation set when gradients use minibatches, so minibatch noise
does not bias the test. With an evaluation set, a proposal waits for the sampler's next evaluation
of it (at least ``swap_every`` steps after the last proposal), so a swap costs no forward pass of
its own; the proposal times still depend on the step count alone, as detailed balance needs.
Even and odd neighbour pairs alternate (a deterministic even-odd sweep).
An accepted swap exchanges two rows of the flat buffer ``W``; everything downstream stays per rung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from memlens.data import mix_seed as _mix

__all__ = ["Exchange", "SwapStats", "RARE_SWAP"]

#: a neighbour pair accepting fewer swaps than this is reported as a gap in the ladder
RARE_SWAP = 0.1


@dataclass
class SwapStats:
    """Swap acceptance per neighbour pair of the ladder: ``pairs[j] = (arm a, arm b)`` (a the
    colder), ``accept [pair, inst]`` the accepted share of ``tries [pair]`` proposals."""

    pairs: list[tuple[int, int]]
    accept: Tensor
    tries: Tensor

    def describe(self, temperatures: Tensor, inst: int = 0) -> list[str]:
        """One line per pair; rarely swapping pairs say which rung to add."""
        out = []
        t = temperatures.tolist()
        for j, (a, b) in enumerate(self.pairs):
            acc = float(self.accept[j, inst])
            line = f"t={t[a]:.3g} <-> t={t[b]:.3g}: swap acceptance {acc:.2f}"
            if acc < RARE_SWAP:
                mid = math.sqrt(t[a] * t[b])
                line += (
                    f" -- rarely swaps: the ladder is too coarse here; add a rung at t ≈ {mid:.3g}"
                )
            out.append(line)
        return out

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "accept": self.accept.tolist(), "tries": self.tries.tolist()}


class Exchange:
    """Proposes swaps on an :class:`~memlens.sampling.sgld.Engine` (see the module docstring)."""

    def __init__(self, eng, nbeta: Tensor, ladder: list[int], chains: int, every: int, batch,
                 seed: int):  # fmt: skip
        self.eng, self.ladder, self.every, self.batch = eng, ladder, every, batch
        self.arms, n_inst = nbeta.shape
        self.chains, self.n_inst = chains, n_inst
        self.gen = torch.Generator().manual_seed(_mix(seed, 71))
        n_pairs = len(ladder) - 1
        self.acc = np.zeros((n_pairs, n_inst))
        self.tries = np.zeros(n_pairs)
        self.last = 0
        self.sweep = 0
        lad = np.asarray(ladder, dtype=np.int64)
        nb = nbeta.detach().cpu().double().numpy()
        self.pairs = []  # per sweep parity (even, odd): pairs j, arms a, b, nβ_a − nβ_b
        for p in (0, 1):
            j = np.arange(p, n_pairs, 2)
            a, b = lad[j], lad[j + 1]
            self.pairs.append((j, a, b, (nb[a] - nb[b])[:, None]))
        self.own = None  # the batch on the model's own instances, for a fused loss (see make)
        #: proposals wait for the sampler's evaluations of ``batch`` (see the module docstring)
        self.at_evals = False

    @classmethod
    def make(cls, plan, eng, setup, eval_x) -> Exchange:
        """From a :class:`~memlens.sampling.sgld.Plan`; the swap losses use the fixed batch of
        the run (full batch) or the evaluation set."""
        ladder = plan.ladder
        if ladder is None:  # coldest first: largest nβ/t
            ladder = torch.argsort(plan.nbeta[:, 0].double(), descending=True).tolist()
        batch = eval_x if eval_x is not None else eng.batch
        ex = cls(eng, plan.nbeta, list(ladder), plan.chains, plan.swap_every, batch, plan.seed)
        ex.own = setup.eval_set if eval_x is not None else setup.data  # the model's own instances
        ex.at_evals = eval_x is not None
        return ex

    def maybe(self, step: int, eval_loss: Tensor | None = None) -> None:
        """Propose swaps once ``every`` steps have passed since the last proposal (with
        ``at_evals``, at the first evaluation after that). ``eval_loss`` ``[E]``: every row's loss
        on this exchange's batch at the current weights, where the sampler has just evaluated it
        (then it is not evaluated again)."""
        if self.at_evals and eval_loss is None:
            return
        if step - self.last >= self.every:
            self.last = step
            self.propose(eval_loss)

    def propose(self, known: Tensor | None = None) -> None:
        # the decisions are made on the CPU in numpy: a handful of [pair, chain, inst] values,
        # where each torch op would cost more in overhead than the arithmetic
        eng, A, C, I = self.eng, self.arms, self.chains, self.n_inst
        with torch.no_grad():
            stepper = getattr(eng, "fused", None)  # a fused_sgld.Stepper: the kernel's loss, or
            fused = known
            if fused is None and stepper is not None and self.own is not None:
                fused = stepper.loss(self.own)
            loss = eng.expanded.loss(self.batch) if fused is None else fused  # eager
            loss = loss.detach().cpu().numpy().astype(np.float64).reshape(A, C, I)
            u = torch.rand(len(self.ladder), C, I, generator=self.gen, dtype=torch.float64)
            # this sweep's neighbour pairs (even or odd) are disjoint: all decided at once
            j, a, b, dnb = self.pairs[self.sweep % 2]
            self.sweep += 1
            if len(j) == 0:
                return
            log_u = u[j].log_().numpy()
            diff = loss[a] - loss[b]  # [pair, C, I]
            with np.errstate(invalid="ignore"):
                ok = (log_u < dnb * diff) & np.isfinite(diff)  # both losses finite
            self.acc[j] += ok.mean(1)
            self.tries[j] += 1.0
            pair, c, i = ok.nonzero()
            if len(pair) == 0:
                return
            ci = c * I + i  # accepted swaps: rows (a, c, i) <-> (b, c, i) of W
            ra, rb = a[pair] * (C * I) + ci, b[pair] * (C * I) + ci
            rows = torch.from_numpy(np.concatenate([ra, rb])).to(eng.W.device)
            other = torch.from_numpy(np.concatenate([rb, ra])).to(eng.W.device)
            eng.W[rows] = eng.W[other]

    def stats(self) -> SwapStats:
        pairs = [(self.ladder[j], self.ladder[j + 1]) for j in range(len(self.ladder) - 1)]
        acc = torch.from_numpy(self.acc / np.maximum(self.tries, 1.0)[:, None])
        return SwapStats(pairs, acc, torch.from_numpy(self.tries.copy()))
