"""Fact memorisation in a real transformer: a TransformerLens bridge trained from scratch on
``(subject, relation) -> object`` facts, most following a rule and a planted few random.

The world (one per instance, drawn from the data seed): subject ``s`` has a class
``c(s) = s mod n_classes``; relation ``r`` maps each class to an object through a random table,
``rule[r, c]``. A fact is ``(s, r) -> rule[r, c(s)]``: a model that has learned every subject's
class (from its other relations) and every relation's table (from other subjects) predicts a fact
it never saw, so these facts can be *generalised*. ``n_planted`` of the ``T`` training facts (all
of them when ``T < n_planted``) get a random other object instead: nothing predicts them, so a
model gets them right only by *memorising* them (``Batch.planted`` marks them). The test set
holds facts of pairs left out of training, all rule-following.

Tokens: subjects ``0..S-1``, relations ``S..S+R-1``, objects ``S+R..S+R+O-1``. A point is the
sequence ``[s, S + r]``; the model reads the logits at the last position; the loss is the cross
entropy of the object token. The model is a native ``TransformerBridge`` (TransformerLens 4.3,
booted with no download) wrapped by :class:`memlens.stacked.StackedModel`, so its chains and
instances are vmapped, and its hooks carry TransformerLens names (``blocks.0.mlp.hook_post``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memlens import validate
from memlens.bundle import ModelBundle
from memlens.data import Batch, Task, instance_generators
from memlens.hooked import Circuits, check_positive_int
from memlens.stacked import StackedConfig, StackedModel

__all__ = ["FactConfig", "FactTransformer", "FactTask", "BUNDLE", "PRESETS", "world"]

_TEMPLATES: dict[tuple, nn.Module] = {}  # one booted bridge per shape (booting costs seconds)


@dataclass(frozen=True)
class FactConfig(StackedConfig):
    n_subjects: int = 32
    n_relations: int = 4
    n_objects: int = 16
    n_layers: int = 1
    d_model: int = 32
    n_heads: int = 2
    d_mlp: int = 64

    def validate(self) -> None:
        super().validate()
        for name in ("n_subjects", "n_relations", "n_objects", "n_layers", "d_model", "d_mlp"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("n_heads", self.n_heads)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.n_objects < 2:
            raise ValueError(f"n_objects must be at least 2, got {self.n_objects}")

    @property
    def d_vocab(self) -> int:
        return self.n_subjects + self.n_relations + self.n_objects


def _template(cfg: FactConfig) -> nn.Module:
    """A native TransformerBridge of this shape (booted once per shape; no download)."""
    key = (cfg.d_vocab, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp)
    if key not in _TEMPLATES:
        from transformer_lens.model_bridge import TransformerBridge

        _TEMPLATES[key] = TransformerBridge.boot_native(
            {
                "n_layers": cfg.n_layers,
                "d_model": cfg.d_model,
                "n_heads": cfg.n_heads,
                "d_head": cfg.d_model // cfg.n_heads,
                "d_mlp": cfg.d_mlp,
                "d_vocab": cfg.d_vocab,
                "n_ctx": 2,
                "act_fn": "relu",
                "normalization_type": None,
                "seed": 0,
            }
        )
    return _TEMPLATES[key]


def _init(name: str, like: Tensor, g: torch.Generator) -> Tensor:
    """Weights N(0, 1/fan_in) (fan_in the last axis), biases 0."""
    if like.ndim < 2:
        return torch.zeros_like(like)
    return torch.randn(like.shape, generator=g) / math.sqrt(like.shape[-1])


def last_token_ce(logits: Tensor, target: Tensor) -> Tensor:
    """One instance's per-example loss: cross entropy of the object at the last position."""
    return F.cross_entropy(logits[:, -1], target, reduction="none")


class FactTransformer(StackedModel):
    """A one- or two-layer attention + ReLU-MLP transformer (TransformerBridge) over fact tokens,
    with an instance axis. Input ``[batch, inst, 2]`` token ids; output logits
    ``[batch, inst, 2, d_vocab]``. Hooks: the bridge's (``blocks.0.mlp.hook_post``, ...)."""

    Config = FactConfig
    input_dims = ("batch", "inst", "tokens")
    circuit_families = ("neuron", "datum")
    representation_hook = "blocks.0.mlp.hook_post"

    def __init__(
        self,
        n_subjects: int = 32,
        n_relations: int = 4,
        n_objects: int = 16,
        n_layers: int = 1,
        d_model: int = 32,
        n_heads: int = 2,
        d_mlp: int = 64,
        n_instances: int = 1,
        seed: int = 0,
    ):
        cfg = FactConfig(
            n_instances=n_instances,
            seed=seed,
            n_subjects=n_subjects,
            n_relations=n_relations,
            n_objects=n_objects,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_mlp=d_mlp,
        )
        super().__init__(
            _template(cfg),
            last_token_ce,
            cfg=cfg,
            input_shape=(2,),
            input_dtype=torch.long,
            init=_init,
            width=2 * max(cfg.d_vocab, 4 * d_model, d_mlp),
        )

    @property
    def object_offset(self) -> int:
        return self.cfg.n_subjects + self.cfg.n_relations

    def _check_targets(self, batch: Batch) -> None:
        t = batch.targets
        if t is None or t.is_floating_point() or tuple(t.shape) != tuple(batch.inputs.shape[:2]):
            got = None if t is None else (tuple(t.shape), t.dtype)
            raise ValueError(f"fact targets must be object token ids [batch, inst], got {got}")
        if bool((t < 0).any()) or bool((t >= self.cfg.d_vocab).any()):
            raise ValueError(f"fact targets must be token ids in [0, {self.cfg.d_vocab})")

    def neuron_hooks(self) -> list[str]:
        return [f"blocks.{layer}.mlp.hook_post" for layer in range(self.cfg.n_layers)]

    def circuits(self, train: Batch) -> Circuits:
        """``neuron:L.k`` is MLP neuron k of layer L at the last position on its key fact (the
        training fact that drives it hardest at the current weights); ``datum:j`` (the family every
        toy model gives its training points) is training fact j's margin, its object's logit
        minus the best other object's."""
        train = self.check_batch(train)
        x, tgt = train.inputs.detach(), train.targets.detach()
        hooks = self.neuron_hooks()
        with torch.no_grad():
            _, cache = self.run_with_cache(x, names_filter=hooks)
        keys = [cache[h][:, :, -1].argmax(0) for h in hooks]  # [inst, d_mlp] per layer
        lo, hi = self.object_offset, self.cfg.d_vocab

        def readout(acts: dict[str, Tensor]) -> Tensor:
            parts = []
            for h, key in zip(hooks, keys, strict=True):
                post = acts[h][..., -1, :]  # [..., T, inst, d_mlp]
                idx = key.expand(*post.shape[:-3], 1, *key.shape)
                parts.append(torch.gather(post, -3, idx).squeeze(-3))
            logits = acts["unembed.hook_out"][..., -1, lo:hi]  # [..., T, inst, O]
            t = (tgt - lo).expand(*logits.shape[:-3], *tgt.shape)[..., None]
            right = torch.gather(logits, -1, t)
            other = logits.scatter(-1, t, float("-inf")).amax(-1, keepdim=True)
            parts.append((right - other)[..., 0].transpose(-1, -2))  # [..., inst, T]
            return torch.cat(parts, -1)

        names = [
            f"neuron:{layer}.{k}"
            for layer in range(self.cfg.n_layers)
            for k in range(self.cfg.d_mlp)
        ] + [f"datum:{j}" for j in range(len(train))]
        return Circuits(names, x, (*hooks, "unembed.hook_out"), readout, None)


def world(cfg: Mapping[str, Any], g: torch.Generator) -> Tensor:
    """The rule table ``[n_relations, n_classes]`` of object indices (``0..n_objects-1``)."""
    return torch.randint(cfg["n_objects"], (cfg["n_relations"], cfg["n_classes"]), generator=g)


class FactTask(Task):
    """The fact recipe: ``T`` training facts (``n_planted`` of them random) and held-out facts.

    Each instance draws its own world, training pairs and planted objects from ``(seed, i)``."""

    def __init__(self, spec: Mapping[str, Any], n_instances: int = 1):
        for k in ("n_subjects", "n_relations", "n_objects", "n_classes"):
            check_positive_int(k, spec[k])
        validate.integer("n_planted", spec["n_planted"], 0)
        if spec["n_objects"] < 2:
            raise ValueError(f"n_objects must be at least 2, got {spec['n_objects']}")
        self.spec = dict(spec)
        self.n_instances = validate.positive_int("n_instances", n_instances)
        self.n_pairs = spec["n_subjects"] * spec["n_relations"]

    def model_kwargs(self) -> dict:
        s = self.spec
        keys = ("n_subjects", "n_relations", "n_objects")
        return {**{k: s[k] for k in keys}, "n_instances": self.n_instances}

    def _draw(self, T: int, seed: int) -> tuple[Batch, Batch]:
        s = self.spec
        S, R, O, C = s["n_subjects"], s["n_relations"], s["n_objects"], s["n_classes"]
        if not 0 < T < self.n_pairs:
            raise ValueError(
                f"T must be in [1, {self.n_pairs - 1}] (n_subjects x n_relations = "
                f"{self.n_pairs} facts, one left out at least for testing), got {T}"
            )
        n_test = min(int(s["n_test"]), self.n_pairs - T)
        parts: list[list[Tensor]] = [[] for _ in range(6)]
        for g in instance_generators(seed, self.n_instances, 11):
            rule = world(s, g)
            order = torch.randperm(self.n_pairs, generator=g)
            subj, rel = order // R, order % R
            obj = rule[rel, subj % C]
            shift = torch.randint(1, O, (self.n_pairs,), generator=g)  # a random *other* object
            planted = torch.zeros(self.n_pairs, dtype=torch.bool)
            planted[: min(s["n_planted"], T)] = True  # every fact when T < n_planted
            obj = torch.where(planted, (obj + shift) % O, obj)
            tokens = torch.stack([subj, S + rel], -1)
            target = S + R + obj
            rows = torch.randperm(T, generator=g)  # the planted facts at random positions
            for k, part in enumerate((tokens[:T][rows], target[:T][rows], planted[:T][rows])):
                parts[k].append(part)
            for k, part in enumerate((tokens[T : T + n_test], target[T : T + n_test])):
                parts[3 + k].append(part)
        x, y, p, xt, yt = (torch.stack(v, 1) for v in parts[:5])
        return Batch(x, y, planted=p), Batch(xt, yt, planted=torch.zeros_like(yt, dtype=bool))

    def sample(self, T: int, seed: int = 0) -> Batch:
        return self._draw(T, seed)[0]

    def split(self, T: int, seed: int = 0, n_test: int = 2048) -> tuple[Batch, Batch]:
        """The ``T`` training facts and up to ``n_test`` held-out facts (the spec's ``n_test``
        when the task was built from a spec)."""
        validate.integer("T (the number of facts)", T, 1)
        validate.seed("seed", seed)
        return self._draw(int(T), seed)

    def batches(self, batch_size: int, seed: int = 0):
        raise ValueError("the fact task is a finite set of facts: train on task.split(T)")


def _task(spec: Mapping[str, Any]) -> FactTask:
    return FactTask(spec)


def _read_dictionary(model, train, opts):
    from toy_models.facts_reader import read_dictionary

    return read_dictionary(model, train, opts)


def baseline(batch: Batch) -> Tensor:
    """Per instance: the cross entropy of the best constant prediction (each object's frequency)."""
    y = batch.targets
    out = []
    for i in range(y.shape[1]):
        counts = torch.bincount(y[:, i]).double()
        p = counts[counts > 0] / counts.sum()
        out.append(-(p * p.log()).sum())
    return torch.stack(out).float()


PRESETS = {
    # under a minute on 2 CPU cores: 120 facts of 128, 8 planted; weight decay 0.1 makes the
    # model learn the rule (the held-out facts right) and memorise the planted facts
    "cpu": {
        "grid": {"T": [120], "seed": [0, 1, 2]},
        "task": {"n_planted": 8, "d_mlp": 64, "n_test": 8},
        "train": {"steps": 800, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
    },
    # five seeds trained longer (a few minutes)
    "paper": {
        "grid": {"T": [120], "seed": [0, 1, 2, 3, 4]},
        "task": {"n_planted": 8, "d_mlp": 64, "n_test": 8},
        "train": {"steps": 3000, "lr": 1e-2, "warmup": 100, "weight_decay": 0.1},
    },
    # seconds, for tests
    "smoke": {
        "grid": {"T": [100], "seed": [0]},
        "task": {"n_planted": 4, "d_mlp": 32, "n_test": 28},
        "train": {"steps": 200, "lr": 1e-2, "warmup": 10, "weight_decay": 0.1},
    },
}

BUNDLE = ModelBundle(
    model=FactTransformer,
    make_task=_task,
    task_defaults={
        "n_subjects": 32,
        "n_relations": 4,
        "n_objects": 16,
        "n_classes": 4,
        "n_planted": 8,
        "n_test": 64,
    },
    model_fields=("n_layers", "d_model", "n_heads", "d_mlp"),
    presets=PRESETS,
    title="fact transformer (TransformerBridge)",
    loss_units="cross entropy per fact (nats)",
    baseline=baseline,
    read_dictionary=_read_dictionary,
)
