# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 · Hooks and probes
#
# memlens's toy models are TransformerLens `HookedRootModule`s: every intermediate activation
# passes through a named `HookPoint`, so the tools you already use on real transformers
# (`run_with_cache`, `run_with_hooks`, ablations) work on them unchanged. Each model also
# carries an **instance axis**, as in Anthropic's *Toy Models of Superposition* (Elhage et al.,
# 2022) and ARENA's TMS code: one model object holds many independent copies, laid out
# `[batch, inst, ...]`, so a whole sweep trains in one loop.
#
# This tutorial covers: the three models and their hooks, caching and ablating activations,
# the instance axis, and attaching built-in probes by name.

# %%
import os
from pathlib import Path

import torch

import memlens as ml
from toy_models import Bottleneck, MLPBlock, Unembed

FAST = os.environ.get("MEMLENS_FAST") == "1"
STEPS = 300 if FAST else 3000
torch.manual_seed(0)
FIGURES = Path("tutorial-output") / "01_hooks_and_probes"  # where this tutorial's figures go
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The three settings
#
# | model | map | hooks |
# |---|---|---|
# | `Bottleneck` | h = W x, x' = ReLU(Wᵀ h + b) | `hook_in`, `hook_hidden`, `hook_pre`, `hook_out` |
# | `MLPBlock` | a = ReLU(W_in r + b_in), y = W_out a + b_out | `hook_in`, `hook_pre`, `hook_post`, `hook_out` |
# | `Unembed` | logits = W_U r + b_U | `hook_in`, `hook_logits` |

# %%
for cls in (Bottleneck, MLPBlock, Unembed):
    print(cls.__name__, "registered as", repr(ml.registry.MODELS.name_of(cls)))
print("all models:", ml.list_models())

# %% [markdown]
# ## Train a sweep of four bottlenecks at once
#
# Four instances, each with its own training set of T = 20 sparse points (n = 50 features,
# sparsity S = 0.9, unit norm) and its own initialisation. `ml.train` sums the per-instance
# losses, so each instance gets exactly its own gradient.

# %%
data = ml.SparseFeatures(n_features=50, sparsity=0.9, normalize=True)
train = data.sample(T=20, n_instances=4, seed=0)  # [T, inst, feat]
model = Bottleneck(n_features=50, d_hidden=2, n_instances=4)
run = ml.train(
    model, train, steps=STEPS, lr=3e-3, weight_decay=1e-2, warmup=STEPS // 10, progress=False
)
print(run.summary())

# %% [markdown]
# ## `run_with_cache`: every activation, `[batch, inst, ...]`
#
# On a root module TransformerLens returns a plain dict of activations.

# %%
out, cache = model.run_with_cache(train)
for name, act in cache.items():
    print(f"{name:12s} {tuple(act.shape)}")

# %% [markdown]
# The hidden vectors `hook_hidden` are the 2-d points a bottleneck stores its data in. Instance 1's
# hidden vectors depend only on instance 1's weights and data:

# %%
h = cache["hook_hidden"]
assert torch.allclose(h[:, 1], train[:, 1] @ model.W[1].detach().T, atol=1e-5)
print("hidden vectors of instance 1:", tuple(h[:, 1].shape))

# %% [markdown]
# ## `run_with_hooks`: an ablation
#
# Zero-ablating the hidden layer leaves only the bias: the output becomes ReLU(b). Projecting
# out a single direction is just as easy. Hooks added by `run_with_hooks` are removed when the
# call returns, even if it raises.


# %%
def zero(act, hook):
    return torch.zeros_like(act)


ablated = model.run_with_hooks(train, fwd_hooks=[("hook_hidden", zero)])
assert torch.allclose(ablated, torch.relu(model.b.detach())[None].expand_as(ablated))
clean_loss = model.loss(train)
with model.hooks(fwd_hooks=[("hook_hidden", zero)]):
    ablated_loss = model.loss(train)
print("loss per instance, clean:  ", clean_loss.detach().numpy().round(4))
print("loss per instance, ablated:", ablated_loss.detach().numpy().round(4))
assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())  # nothing left over

# %% [markdown]
# ## Probes, attached by name
#
# A probe is a plugin that reads activations at hook points (or just the weights) and returns a
# result with `summary()`, `plot()` and `to_dict()`. Built-in probes are registered through the
# `memlens.probes` entry-point group, like any third party's. `memlens.probing` attaches them for
# the duration of a block and always removes its hooks.

# %%
print("registered probes:", ml.list_probes())
with ml.probing(model, "dimensionality", train=train) as (dim,):
    model(train)
res = dim.result()
print(res.summary())

# %% [markdown]
# `max_data_dim` is the maximal data dimensionality D* of every training point, per instance
# (`[inst, T]`). Σ D* = rank(H) = m = 2 for any model whose hidden vectors span the plane, so
# the mean over T = 20 points is m/T = 0.1 whatever the model learned; what the model decides is
# how that is shared out. This model does not memorise (the default run's train losses are
# 0.43-0.54, against about 0.9 for the ablated model), and it shares the plane unevenly: in the
# default run the D* of instance 0 runs from 0.000 to 0.207, with points the model gives no
# direction of their own near 0 and no point above 3 m/T. (A memorising bottleneck would
# give each point its own direction, a polygon with D* = m/T each: see `03_double_descent.py`
# at small T.)

# %%
print("D* of instance 0:", res.max_data_dim[0].numpy().round(3))
print("sum of D* per instance:", res.max_data_dim.sum(-1).numpy().round(3))
fig = res.plot()
fig.savefig(FIGURES / "dimensionality.png", dpi=80)
print("wrote", FIGURES / "dimensionality.png")

# %% [markdown]
# Next: `02_reading_dictionaries.py` reads the lookup table a memorising model builds, straight
# from its weights.
