"""``SGLDConfig``: the sampler's settings, one frozen dataclass validated on construction.

Every :class:`~memlens.sampling.Tempering` stores the *resolved* config (concrete step sizes per
temperature and instance, concrete steps per draw, nβ per instance), so a result says exactly how
it was sampled and round-trips through JSON (:meth:`SGLDConfig.to_dict` / :meth:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from memlens.io import jsonable

__all__ = ["SGLDConfig", "check_positive", "check_int"]

AUTO = "auto"
#: recorded draws per chain when ``draws`` is left unset
DEFAULT_DRAWS = 200


def check_positive(name: str, v: Any) -> float:
    """``v`` as a float, or a ``ValueError`` naming ``name``, its value and the allowed range."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


def check_int(name: str, v: Any, low: int) -> int:
    """``v`` as an int >= ``low``, or a ``ValueError`` naming the field and the range."""
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def _floats(name: str, v: Any) -> Any:
    """A number or a (nested) sequence of positive numbers as a (nested) tuple of floats."""
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError(f"{name} must not be empty")
        return tuple(_floats(name, x) for x in v)
    if hasattr(v, "tolist"):  # tensors, numpy arrays and scalars
        return _floats(name, v.tolist())
    return check_positive(name, v)


#: the SGLD steps: Leimkuhler-Matthews (default) and Euler-Maruyama
INTEGRATORS = ("lm", "euler")


@dataclass(frozen=True)
class SGLDConfig:
    """Settings of localised, tempered SGLD (background.md §5); validated on construction.

    Attributes:
        chains: independent chains per temperature and instance.
        draws: recorded draws per chain (one every ``thin`` SGLD steps), burn-in included.
            ``None`` (default): 200, and with ``step_size="auto"`` more, up to ``max_draws``, where
            a cell's λ̂ is less precise than ``precision`` (the run is redrawn once, longer).
        burnin: the first ``burnin`` draws are excluded from every estimate; ``None``: draws // 4.
        thin: SGLD steps per draw. ``None``: 1 with an explicit step size; with
            ``step_size="auto"`` the calibration chooses it so the chains mix (within
            ``max_steps``).
        step_size: ε. ``"auto"`` (default): chosen per temperature and instance by
            :func:`memlens.sampling.calibration.auto_step` so that λ̂ no longer depends on ε and
            the chains mix. Or one number, one per temperature, or ``[temp][inst]``.
        localization: γ, the pull towards w*.
        nbeta: nβ at t = 1, one number or one per instance; ``None``: n / log n with n the
            number of training points (not the batch size).
        batch_size: minibatch per chain and instance for the gradient; ``None``: full batch.
        seed: seeds every chain's noise and minibatch stream.
        eval_size: diagnostics use the loss on a fixed evaluation set shared by all draws: the
            whole training set when it has at most this many points, else this many fixed points.
        eval_every: evaluate that loss every this many draws; ``None``: every draw with full-batch
            gradients (free), else as often as keeps its cost near a tenth of sampling.
        blowup: a chain whose loss exceeds L_n(w*) + blowup·(|L_n(w*)| + d/(2 nβ/t)) diverged.
        max_diffusion: chains still this close to pure diffusion "barely move".
        max_rhat, min_ess: health thresholds: a (temperature, instance) cell is unhealthy when its
            split R-hat exceeds ``max_rhat`` or its ESS falls below ``min_ess``.
        bias_tolerance: ``"auto"`` accepts ε when λ̂(ε) and λ̂(3ε) agree within their errors
            *and* the test could resolve a relative change of this size.
        swap_every: replica exchange: every this many SGLD steps, propose swapping the states of
            neighbouring temperatures (Metropolis on their tempered losses); 0: never. Only
            ladders with more than one rung swap.
        precondition: a frozen diagonal preconditioner M = 1/((nβ/t)|diag H| + γ) from the
            Hessian's diagonal at w* (:mod:`memlens.sampling.precondition`). ``"auto"``
            (default): with ``step_size="auto"`` only (an explicit step keeps M = 1); or True /
            False.
        disperse: start chains dispersed around w*: even chains with noise of their own rung's
            posterior scale (√M), odd chains with that of the rung two places hotter on the ladder
            (extended past its top with the top's spacing), so that chains which never
            cross between modes disagree and R-hat sees it. Burn-in draws are excluded from the
            blow-up test. With ``burnin=0`` chains start at w* (nothing would forget the starts:
            at t ≥ 27 on the LLC benchmark's TMS, dispersed starts without burn-in raised λ̂ from
            11-12 to 16-17).
        max_steps: ``"auto"``'s budget: SGLD steps per chain of the run at its first number of
            draws (draws x thin), and 3/4 of it per calibration round.
        precision: with ``draws=None`` and ``step_size="auto"``: when a live cell's standard error
            of λ̂ exceeds ``precision`` x max(|λ̂|, 1), the run is redrawn with enough draws for the
            worst such cell (standard errors fall as 1/√draws), up to ``max_draws``. 0.03 keeps
            every cell's λ̂ within about 10% of its expectation (3.3 standard errors).
        max_draws: the most draws per chain the precision rule may ask for (the run then costs up
            to max_draws / 200 times the first). 1600: at 800, cells of the one-circuit switch
            model (``benchmarks/tempering_truth.py``, seed 1) kept standard errors up to 6.7%.
        integrator: ``"lm"`` (default): the Leimkuhler-Matthews step, each Gaussian draw shared
            by two consecutive steps, exact on quadratic wells (:mod:`memlens.sampling.sgld`);
            ``"euler"``: plain Euler-Maruyama SGLD, the peers' step (devinterp,
            canonical-interp), whose stationary variance on a well of curvature a is
            1/(a(1 − εa/4)). Same cost, same ε → 0 limit.
    """

    chains: int = 8
    draws: int | None = None
    burnin: int | None = None
    thin: int | None = None
    step_size: Any = AUTO
    localization: float = 1.0
    nbeta: Any = None
    batch_size: int | None = None
    seed: int = 0
    eval_size: int = 512
    eval_every: int | None = None
    blowup: float = 100.0
    max_diffusion: float = 0.25
    max_rhat: float = 1.1
    min_ess: float = 100.0
    bias_tolerance: float = 0.05
    max_steps: int = 6_000
    swap_every: int = 10
    precondition: Any = AUTO
    disperse: bool = True
    integrator: str = "lm"
    precision: float = 0.03
    max_draws: int = 1600

    def __post_init__(self) -> None:
        check_int("chains", self.chains, 1)
        if self.draws is not None:
            check_int("draws", self.draws, 2)
        if self.burnin is not None:
            check_int("burnin", self.burnin, 0)
            if self.burnin >= self.n_draws:
                raise ValueError(
                    f"burnin must be below draws ({self.n_draws}), got {self.burnin}: burn-in "
                    "draws are discarded"
                )
        if not 0 < check_positive("precision", self.precision) < 1:
            raise ValueError(f"precision must be in (0, 1), got {self.precision!r}")
        check_int("max_draws", self.max_draws, 2)
        if self.thin is not None:
            check_int("thin", self.thin, 1)
        if isinstance(self.step_size, str):
            if self.step_size != AUTO:
                raise ValueError(f"step_size must be 'auto' or positive, got {self.step_size!r}")
        else:
            object.__setattr__(self, "step_size", _floats("step_size", self.step_size))
        g = self.localization
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ValueError(f"localization must be a finite number >= 0, got {g!r}")
        object.__setattr__(self, "localization", float(g))
        if self.nbeta is not None:
            object.__setattr__(self, "nbeta", _floats("nbeta", self.nbeta))
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        check_int("eval_size", self.eval_size, 1)
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, 1)
        check_positive("blowup", self.blowup)
        check_positive("max_diffusion", self.max_diffusion)
        if check_positive("max_rhat", self.max_rhat) <= 1:
            raise ValueError(f"max_rhat must exceed 1, got {self.max_rhat!r}")
        check_positive("min_ess", self.min_ess)
        if not 0 < check_positive("bias_tolerance", self.bias_tolerance) < 1:
            raise ValueError(f"bias_tolerance must be in (0, 1), got {self.bias_tolerance!r}")
        check_int("max_steps", self.max_steps, 1)
        check_int("swap_every", self.swap_every, 0)
        if self.precondition not in (AUTO, True, False):
            raise ValueError(
                f"precondition must be 'auto', True or False, got {self.precondition!r}"
            )
        if not isinstance(self.disperse, bool):
            raise ValueError(f"disperse must be True or False, got {self.disperse!r}")
        if self.integrator not in INTEGRATORS:
            raise ValueError(
                f"integrator must be one of {list(INTEGRATORS)}, got {self.integrator!r}"
            )

    # ------------------------------------------------------------------ derived
    @property
    def auto(self) -> bool:
        """Whether the step size (and steps per draw) are chosen by the calibration."""
        return self.step_size == AUTO

    @property
    def preconditioned(self) -> bool:
        """Whether the run uses the diagonal preconditioner."""
        return self.auto if self.precondition == AUTO else bool(self.precondition)

    @property
    def n_draws(self) -> int:
        """The draws of the first run: ``draws``, or 200 when unset."""
        return DEFAULT_DRAWS if self.draws is None else self.draws

    @property
    def n_burnin(self) -> int:
        return self.burnin_at(self.n_draws)

    def burnin_at(self, draws: int) -> int:
        """The burn-in of a run of ``draws`` draws: ``burnin``, or draws // 4 when unset."""
        return draws // 4 if self.burnin is None else self.burnin

    @property
    def dispersed(self) -> bool:
        """Whether chains start dispersed: ``disperse``, and a burn-in to forget the starts."""
        return self.disperse and self.n_burnin > 0

    def replace(self, **changes: Any) -> SGLDConfig:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def make(cls, config: SGLDConfig | None = None, **settings: Any) -> SGLDConfig:
        """``config`` (or the defaults) with ``settings`` applied; unknown names are refused."""
        if config is not None and not isinstance(config, SGLDConfig):
            raise TypeError(f"config must be an SGLDConfig, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(config or cls(), **settings)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> SGLDConfig:
        return cls.make(None, **d)
