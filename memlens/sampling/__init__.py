"""Localised, tempered SGLD over batched chains and temperatures; the local learning coefficient.

* :func:`temper` / :func:`estimate_llc` / :func:`calibrate` (:mod:`.llc`): the public calls;
* :class:`SGLDConfig` (:mod:`.config`): the sampler's settings, stored resolved with every result;
* :mod:`.sgld`: the batched engine (one flat parameter buffer, one noise draw per step;
  :func:`~memlens.sampling.sgld.advance` is the K-step block a fused kernel may replace);
* :mod:`.exchange`: replica exchange between neighbouring temperatures (on by default);
* :mod:`.precondition`: the frozen diagonal preconditioner and the curvature estimates;
* :mod:`.random_streams`: per-chain noise and minibatch streams;
* :mod:`.calibration`: ``step_size="auto"``, a step where λ̂ no longer depends on ε;
* :mod:`.diagnostics`: R-hat and ESS on the evaluation-set loss, per-cell health and warnings;
* :mod:`.spectrum`: λ̂(t) read as flat stretches and jumps;
* :mod:`.streaming`: the driver of :class:`memlens.probe.StreamingProbe` s;
* :mod:`.results`: :class:`Tempering`.
"""

from memlens.sampling.calibration import top_curvature
from memlens.sampling.config import SGLDConfig
from memlens.sampling.diagnostics import (
    LLC,
    Diagnostics,
    Health,
    effective_sample_size,
    split_rhat,
)
from memlens.sampling.llc import calibrate, estimate_llc, temper
from memlens.sampling.results import Calibration, Tempering
from memlens.sampling.spectrum import Spectrum, fit_spectrum

__all__ = [
    "temper",
    "estimate_llc",
    "calibrate",
    "SGLDConfig",
    "Tempering",
    "Calibration",
    "LLC",
    "Diagnostics",
    "Health",
    "Spectrum",
    "fit_spectrum",
    "split_rhat",
    "effective_sample_size",
    "top_curvature",
]
