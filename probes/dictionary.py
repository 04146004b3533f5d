"""Read the memorised dictionary (the lookup table) off a toy model's weights.

A memorising network stores its training set as a dictionary: *slots* (neurons, or hidden
directions) whose *key* is the training point they respond to and whose *value* is the output they
write. What a slot is depends on the model, so each model plugin ships its reader in its bundle
(``ModelBundle.read_dictionary``); this probe finds it through the registry, for a third party's
model exactly as for the built-in ones:

* **MLP block**: slot = neuron; each datum is decompiled into a sparse code of at most
  ``max_code`` neurons (see ``toy_models.mlp.read_dictionary``).
* **Final layer**: slot = the training input's direction; its value is the token ``W_U`` maps it
  to; its match score is the datum's leverage D*.
* **Bottleneck**: slot = the hidden direction of a training point; its value is the decoded
  pattern there, which must name its own datum uniquely.

With ``decompile=True`` it reads a *distributed* code instead, on any model: each training point's
code, the few units whose output alone (every other unit zeroed at a hook) returns the model's own
output for that point and for no other, found and checked by running the model with hooks
(:mod:`probes.decompile`).

Given the training set, the probe names the datum each entry stores and reports ``coverage``, the
fraction of (non-zero) training points with an entry of their own, and ``read_back_accuracy``, the
fraction the table reads back without running the model. In the generalising regime slots serve
many points, so coverage is low: the probe reports that it found no lookup table rather than
invent one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memlens.data import Batch, as_batch
from memlens.hooked import HookedToyModel
from memlens.lookup import DictEntry, DictionaryOptions, DictionaryResult
from memlens.probe import Probe
from memlens.registry import bundle_of
from probes.decompile import decompile

__all__ = ["DictionaryProbe", "DictionaryResult", "DictEntry", "DictionaryOptions"]


class DictionaryProbe(Probe):
    """Reads the memorised dictionary from the weights (no forward pass needed).

    Args:
        train: the training set (a ``Batch``; for the MLP block and the final layer it must hold
            the targets). Needed to name data and to report coverage and read-back.
        rtol, min_share, max_code, value_threshold, min_margin: the reading's thresholds, see
            :class:`memlens.lookup.DictionaryOptions` (``max_code`` None: 8 for the weights,
            no cap when decompiling).
        decompile: decompile each point's code by ablation instead of reading the weights (for
            distributed codes, e.g. an MLP block trained without an L1 penalty; see
            :func:`probes.decompile.decompile`, which uses ``rtol``, ``max_code`` and
            ``value_threshold``). Works on any model whose ``hook`` carries
            ``[batch, inst, units]``.
        hook: where to decompile (default: the model's representation hook).
    """

    hooks = ()
    # registration metadata: a sweep runs it by default on models whose bundle reads dictionaries
    default = True
    requires = "a dictionary reader (its ModelBundle's read_dictionary)"

    @classmethod
    def supports(cls, bundle) -> bool:
        return bundle.read_dictionary is not None

    @classmethod
    def sweep_report(cls, view, label):
        from probes.sweep_curves import dictionary_section

        return dictionary_section(view, label)

    def __init__(
        self,
        train: Tensor | Batch | None = None,
        rtol: float = 0.25,
        min_share: float = 0.2,
        max_code: int | None = None,
        value_threshold: float = 0.1,
        min_margin: float = 0.05,
        decompile: bool = False,
        hook: str | None = None,
    ):
        self.options = DictionaryOptions(
            rtol, min_share, 8 if max_code is None else max_code, value_threshold, min_margin
        )
        self.max_code = max_code
        if not isinstance(decompile, bool):
            raise TypeError(f"decompile must be True or False, got {decompile!r}")
        if hook is not None and not decompile:
            raise ValueError("hook is only used with decompile=True")
        if hook is not None and not isinstance(hook, str):
            raise TypeError(f"hook must be a hook name, got {hook!r}")
        self.decompiles, self.hook = decompile, hook
        super().__init__(train=None if train is None else as_batch(train))

    def result(self) -> DictionaryResult:
        if self.model is None:
            raise ValueError("DictionaryProbe is not attached: use memlens.probing() or run()")
        return self.read(self.model)

    @torch.no_grad()
    def read(self, model: HookedToyModel) -> DictionaryResult:
        bundle = bundle_of(model)
        if self.decompiles:
            if self.train is None:
                raise ValueError(
                    "decompile needs the training set (train=...) to name each code's point"
                )
            self.model = model
            o = self.options
            return decompile(
                model,
                self.train,
                hook=self.hook,
                rtol=o.rtol,
                max_code=self.max_code,
                value_threshold=o.value_threshold,
            )
        if bundle.read_dictionary is None:
            raise ValueError(
                f"model {bundle.name!r} ships no dictionary reader: give its ModelBundle a "
                "read_dictionary(model, train, options) function"
            )
        self.model = model
        train = None if self.train is None else model.check_batch(self.train)
        res = bundle.read_dictionary(model, train, self.options)
        res.model = bundle.name
        return res
