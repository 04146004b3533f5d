# %% [markdown]
# # 07 · From toy to transformer: which facts a transformer stores, where, and what heat removes
#
# The toy models stand in for the parts of a transformer where memorisation lives. Here the same
# three questions are asked of a real TransformerLens transformer (a native `TransformerBridge`,
# booted with no download), trained from scratch by `memlens.train`:
#
# 1. **Which points are stored, and where?** The fact task (`toy_models.facts`): `T` facts
#    `(subject, relation) -> object`; most follow a rule (each subject has a class, each relation
#    maps classes to objects), so the model can generalise; a planted few are random, so it must
#    memorise them (`Batch.planted` marks them). The dictionary reader attributes each fact's
#    margin to MLP neurons; silencing the neurons it names must remove that fact and spare the
#    rule-following ones.
# 2. **Which facts look memorised, and D\***: the `memorised` probe runs every detector memlens
#    has against the planted facts and names the best. D\*, the maximal data dimensionality of
#    each fact at a hook, is one of them: memorised points get a direction of their own (D\* near
#    1), generalised points share theirs.
# 3. **Which circuits die under tempering?** `memlens.temper` with the `survival` probe: at each
#    temperature, which facts' margins the tempered posterior noises out.
#
# The transformer has no instance axis of its own: `memlens.stacked.StackedModel` stacks copies
# of its parameters and vmaps its forward (`torch.func`), so instances, chains and temperatures
# run in one batched pass, and its hooks keep their TransformerLens names. Last, a capacity
# sweep: facts stored against parameters, against Allen-Zhu & Li's ≈ 2 bits per parameter.
# `MEMLENS_FAST=1` shrinks every size.

# %%
import dataclasses
import json
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import memlens as ml
from memlens.lookup import DictionaryOptions
from toy_models import facts_reader as fr
from toy_models.facts import BUNDLE, FactTask, FactTransformer

FAST = os.environ.get("MEMLENS_FAST") == "1"
OUT = Path("tutorial-output/07_toy_to_transformer")
OUT.mkdir(parents=True, exist_ok=True)
warnings.simplefilter("ignore", RuntimeWarning)  # short chains: the health table says it all
results: dict = {}


# %% [markdown]
# ## Train: three transformers (instances) on their own worlds of 128 facts, 120 seen, 8 planted

# %%
N_INST = 3
preset = BUNDLE.preset("cpu")
spec = BUNDLE.full_spec({**preset["task"], "T": 120, "seed": 0})
train, test = FactTask(spec, n_instances=N_INST).split(120, seed=0)
model = FactTransformer(d_mlp=spec["d_mlp"], n_instances=N_INST, seed=0)
tr = preset["train"]
run = ml.train(model, train, test=test, steps=tr["steps"], lr=tr["lr"], warmup=tr["warmup"],
               weight_decay=tr["weight_decay"], progress=False)  # fmt: skip
with torch.no_grad():
    train_acc = fr.accuracy(model, model(train.inputs), train.targets)
    test_acc = fr.accuracy(model, model(test.inputs), test.targets).float().mean(0)
planted = train.planted
results["planted_train_acc"] = float(train_acc[planted].float().mean())
results["rule_train_acc"] = float(train_acc[~planted].float().mean())
results["held_out_acc"] = test_acc.tolist()
print(f"{sum(p[0].numel() for p in model.parameters())} parameters per transformer; "
      f"trained in {run.seconds:.0f} s")  # fmt: skip
print(f"planted facts right: {results['planted_train_acc']:.0%}; rule facts right: "
      f"{results['rule_train_acc']:.0%}; held-out facts right: "
      + ", ".join(f"{a:.0%}" for a in results["held_out_acc"]))  # fmt: skip

# %% [markdown]
# ## 1. Which facts are stored, and where
#
# A fact's *slots* are the MLP neurons specific to it whose direct contributions to its margin
# (its object's logit minus the runner-up's) add up past the margin. Silencing them (a real
# forward pass, `StackedModel.run_instance` with an ablation hook) must flip the fact.

# %%
d = fr.read_dictionary(model, train, DictionaryOptions(max_code=8))
rows = []
for i in range(N_INST):
    rule = ~planted[:, i]
    for j in planted[:, i].nonzero().flatten().tolist():
        slots = fr.slots_of(d, i, j)
        if not slots:
            continue
        acc = fr.accuracy(
            model, fr.ablate(model, i, train.inputs[:, i], slots), train.targets[:, i]
        )
        rows.append({"inst": i, "fact": j, "slots": len(slots), "removed": not bool(acc[j]),
                     "rule_kept": float(acc[rule].float().mean())})  # fmt: skip
cov_planted = float(d.covered.T[planted].float().mean())
cov_rule = float(d.covered.T[~planted].float().mean())
results["planted_with_slots"] = len(rows)
results["planted_removed"] = sum(r["removed"] for r in rows)
results["rule_kept_mean"] = sum(r["rule_kept"] for r in rows) / max(1, len(rows))
print(f"{len(rows)} of {int(planted.sum())} planted facts have a code of at most 8 neurons "
      f"(coverage: planted {cov_planted:.0%}, rule {cov_rule:.0%}); silencing a planted fact's "
      f"slots removes it in {results['planted_removed']}/{len(rows)} cases and keeps "
      f"{results['rule_kept_mean']:.0%} of the rule facts on average")  # fmt: skip

contrib, margin, _ = fr.neuron_attribution(model, train)
fig, ax = plt.subplots(figsize=(9, 3.2))
facts0 = (
    planted[:, 0].nonzero().flatten().tolist() + (~planted[:, 0]).nonzero().flatten()[:8].tolist()
)
im = ax.imshow(contrib[0, facts0].numpy(), aspect="auto", cmap="RdBu_r",
               vmin=-contrib[0].abs().max(), vmax=contrib[0].abs().max())  # fmt: skip
ax.axhline(planted[:, 0].sum() - 0.5, color="k", lw=1)
ax.set_yticks(range(len(facts0)), [f"{'planted' if planted[j, 0] else 'rule'} {j}" for j in facts0],
              fontsize=7)  # fmt: skip
ax.set(xlabel="MLP neuron (blocks.0.mlp.hook_post)", ylabel="fact",
       title="instance 0: each neuron's direct contribution to each fact's margin\n"
             "(above the line: the 8 planted facts; below: 8 rule facts)")  # fmt: skip
fig.colorbar(im, ax=ax, label="logit margin")
fig.tight_layout()
fig.savefig(OUT / "07_attribution.png", dpi=110)

# %% [markdown]
# ## 2. Which facts look memorised? Every detector, and D\*
#
# The `memorised` probe (`find_memorised`, found here through the registry like any plugin
# probe; `memlens memorised CKPT` on the command line) scores every training fact by every
# detector memlens has: the loss and gradient norm at w* (baselines), D\* at every hook (`dstar`
# is D\* at the model's representation hook, `blocks.0.mlp.hook_post`), membership in the
# dictionary the reader above reads, and four scores from one tempering run over t = 1, 10, 100
# (the loss rise and variance under the tempered posterior at t = 10, the Bayesian influence
# function, the characteristic temperature). The planted facts are the ground truth: each
# detector's AUROC (0.5 = chance) says how well it finds them. The tempering runs with the
# settings section 3 explains (a tight localisation, γ = 300, and a fixed step).

# %%
memorised = ml.get_probe("memorised")  # the registry's probe; .find is find_memorised
mem = memorised.find(model, train, temperature=10.0, chains=4, draws=40 if FAST else 60, thin=10,
                     step_size=3e-4, localization=300.0, seed=0, progress=False)  # fmt: skip
au = mem.auroc()
best, best_auroc = mem.best()
print("AUROC per instance (D* at the other hooks: mem.summary() lists them all)")
for d in [d for d in au if not d.startswith("dstar:")] + (
    [best] if best.startswith("dstar:") else []
):
    print(f"  {d:<28} " + ", ".join(f"{a:.2f}" for a in au[d].tolist()))
results["auroc"] = {d: a.tolist() for d, a in au.items() if not d.startswith("dstar:")}
results["detectors_compared"] = len([d for d in au if d not in mem.data_only])
results["best_detector"], results["best_auroc"] = best, best_auroc
results["best_auroc_per_instance"] = au[best].tolist()
dstar = mem.scores["dstar:blocks.0.hook_resid_post"]
results["auroc_dstar_resid"] = au["dstar:blocks.0.hook_resid_post"].tolist()
results["dstar_planted"] = float(dstar.T[planted].mean())
results["dstar_rule"] = float(dstar.T[~planted].mean())
print(f"best detector: {best}, AUROC {best_auroc:.2f} (per instance: "
      + ", ".join(f"{a:.2f}" for a in results["best_auroc_per_instance"])
      + f"; the best of {results['detectors_compared']} detectors on these planted facts)")  # fmt: skip
print("AUROC of D* at blocks.0.hook_resid_post: "
      + ", ".join(f"{a:.2f}" for a in results["auroc_dstar_resid"]))  # fmt: skip
print(f"mean D*: planted {results['dstar_planted']:.2f}, rule {results['dstar_rule']:.2f}")
shown = {d: v for d, v in mem.scores.items() if not d.startswith("dstar:") or d == best}
ax = dataclasses.replace(mem, scores=shown).plot()  # ROC curves, instance 0 (D*: two hooks)
ax.figure.savefig(OUT / "07_roc.png", dpi=110)
plt.close(ax.figure)

fig, ax = plt.subplots(figsize=(6, 3.4))
for i in range(N_INST):
    x = torch.full((len(train),), float(i)) + 0.25 * (torch.rand(len(train)) - 0.5)
    ax.scatter(x[~planted[:, i]], dstar[i][~planted[:, i]], s=8, c="tab:blue",
               label="rule fact" if i == 0 else None)  # fmt: skip
    ax.scatter(x[planted[:, i]], dstar[i][planted[:, i]], s=24, c="tab:red", marker="*",
               label="planted fact" if i == 0 else None)  # fmt: skip
ax.set(xticks=range(N_INST), xlabel="instance", ylabel="D* (blocks.0.hook_resid_post)",
       title="planted facts get a direction of their own")  # fmt: skip
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "07_dstar.png", dpi=110)

# %% [markdown]
# ## 3. Which circuits die under tempering
#
# The `survival` probe reads the fact circuits (`datum:j`, each fact's margin) and the MLP
# neurons at every draw of the tempered posterior. A fact is noised out at temperature t when its
# margin falls below half its value at w*.
#
# **The sampler's settings, and their limit on a transformer.** At the default localisation
# γ = 1 no setting we tried gives healthy cells here: a fixed step of 1e-3 diverges, 1e-4 barely
# moves in 600 steps, and `step_size="auto"` (preconditioned) spends about ten minutes calibrating
# and then falls back to a step that diverges. The cause is the cross entropy of a fitted model:
# at w* it is saturated, so its Hessian is nearly zero and the preconditioner (and the dispersed
# starts, which draw from it) see flat directions of width 1/√γ = 1 per weight, while a small
# distance away the curvature is large. (On a briefly trained checkpoint λ̂ at t = 1 even comes
# out negative beyond its error: weight decay held w*, and the loss alone still falls nearby, so
# w* is not a minimum of L_n.) A tighter localisation, γ = 300, keeps the chains where the
# curvature at w* describes the posterior: with a fixed step of 3e-4 and 10 steps per draw every
# (temperature, instance) cell is healthy, dispersed starts included. The fractions below are
# therefore those of a posterior localised at width about 1/√300 ≈ 0.06 per weight.

# %%
temps = [1.0, 10.0, 100.0] if FAST else [1.0, 3.0, 10.0, 30.0, 100.0]
tp = ml.temper(model, train, temps, probes=["survival"], chains=4, draws=60, thin=10,
               step_size=3e-4, localization=300.0, seed=0, progress=False)  # fmt: skip
results["healthy_cells"] = [int(tp.health.ok.sum()), tp.health.ok.numel()]
print(f"{results['healthy_cells'][0]} of {results['healthy_cells'][1]} (temperature, instance) "
      "cells healthy (γ = 300, ε = 3e-4, 10 steps per draw)")  # fmt: skip
surv = tp.probe("survival")
fact_idx = torch.tensor([n.startswith("datum:") for n in surv.names])  # fact margins
dead = surv.noised_out[:, :, fact_idx]  # [temp, inst, T]
pl = planted.T[None].expand_as(dead)
frac_planted = [float(dead[a][pl[a]].float().mean()) for a in range(len(temps))]
frac_rule = [float(dead[a][~pl[a]].float().mean()) for a in range(len(temps))]
results["temperatures"] = temps
results["noised_out_planted"] = frac_planted
results["noised_out_rule"] = frac_rule
for t, fp, fr_ in zip(temps, frac_planted, frac_rule, strict=True):
    print(f"t = {t:>5g}: noised out {fp:.0%} of planted facts, {fr_:.0%} of rule facts")

fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(temps, frac_planted, "o-", c="tab:red", label="planted (memorised) facts")
ax.plot(temps, frac_rule, "s-", c="tab:blue", label="rule (generalised) facts")
ax.set(xscale="log", xlabel="temperature t", ylabel="fraction noised out",
       title="planted facts are noised out more often than rule facts")  # fmt: skip
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "07_survival.png", dpi=110)

# %% [markdown]
# ## Capacity: facts stored against parameters
#
# One-head models of growing width, `(d_model, d_mlp)`, trained on 500 facts (32 subjects x 16
# relations) that are all random, so nothing can be generalised. Each stored fact (argmax right)
# is log2(16) = 4 bits; chance alone gets about 500/16 ≈ 31 facts right. Allen-Zhu & Li report
# ≈ 2 bits per parameter for well-trained language models.

# %%
sizes = [(2, 4), (8, 16)] if FAST else [(2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
cap = fr.capacity(sizes, T=500, steps=300 if FAST else 1500, seeds=1 if FAST else 2)
results["capacity"] = cap
for r in cap:
    print(f"d_model={r['d_model']:>2}, d_mlp={r['d_mlp']:>2}: {r['params']:>5} parameters, stores "
          f"{sum(r['facts_stored']) / len(r['facts_stored']):.0f} of 500 random facts = "
          f"{sum(r['bits_per_param']) / len(r['bits_per_param']):.2f} bits per parameter")  # fmt: skip

ax = fr.plot_capacity(cap, T=500, n_objects=16)
fig = ax.figure
fig.tight_layout()
fig.savefig(OUT / "07_capacity.png", dpi=110)

(OUT / "07_results.json").write_text(json.dumps(results, indent=1))
print(f"wrote {OUT}/07_attribution.png, 07_roc.png, 07_dstar.png, 07_survival.png, 07_capacity.png")
