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
        self.nb = nbeta.to(eng.W.device, torch.float64)
        self.gen = torch.Generator().manual_seed(_mix(seed, 71))
        n_pairs = len(ladder) - 1
        self.acc = torch.zeros(n_pairs, n_inst, dtype=torch.float64)
        self.tries = torch.zeros(n_pairs, dtype=torch.float64)
        self.last = 0
        self.sweep = 0
        dev = eng.W.device
        lad = torch.tensor(ladder, dtype=torch.long, device=dev)
        self.pairs = []  # per sweep parity (even, odd): pairs j, arms a, b, nβ_a − nβ_b, ones
        for p in (0, 1):
            j = torch.arange(p, n_pairs, 2)
            a, b = lad[j.to(dev)], lad[(j + 1).to(dev)]
            dnb = (self.nb[a] - self.nb[b])[:, None]
            self.pairs.append((j, a, b, dnb, torch.ones(len(j), dtype=torch.float64)))
        self.ident = torch.arange(self.arms, device=dev)[:, None, None].expand(
            self.arms, chains, n_inst
        )
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
        eng, A, C, I = self.eng, self.arms, self.chains, self.n_inst
        with torch.no_grad():
            stepper = getattr(eng, "fused", None)  # a fused_sgld.Stepper: the kernel's loss, or
            fused = known
            if fused is None and stepper is not None and self.own is not None:
                fused = stepper.loss(self.own)
            loss = (eng.expanded.loss(self.batch) if fused is None else fused).double()  # eager
            loss = loss.view(A, C, I)
            u = torch.rand(len(self.ladder), C, I, generator=self.gen, dtype=torch.float64)
            # this sweep's neighbour pairs (even or odd) are disjoint: all decided at once
            j, a, b, dnb, ones = self.pairs[self.sweep % 2]
            self.sweep += 1
            if len(j) == 0:
                return
            diff = loss.index_select(0, a) - loss.index_select(0, b)  # [pair, C, I]
            logr = dnb * diff
            finite = torch.isfinite(diff)  # both losses finite (float32 losses cannot overflow)
            ok = (u.index_select(0, j).to(loss.device).log_() < logr) & finite
            self.acc.index_add_(0, j, ok.double().mean(1).cpu())
            self.tries.index_add_(0, j, ones)
            if not bool(ok.any()):
                return
            perm = self.ident.clone()
            a3, b3 = a[:, None, None], b[:, None, None]
            perm.index_copy_(0, a, torch.where(ok, b3, a3))
            perm.index_copy_(0, b, torch.where(ok, a3, b3))
            P = eng.W.shape[1]
            W = eng.W.view(A, C * I, P)
            W.copy_(W.gather(0, perm.view(A, C * I, 1).expand(A, C * I, P)))

    def stats(self) -> SwapStats:
        pairs = [(self.ladder[j], self.ladder[j + 1]) for j in range(len(self.ladder) - 1)]
        return SwapStats(pairs, self.acc / self.tries.clamp_min(1)[:, None], self.tries.clone())
