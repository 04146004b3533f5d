# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 06 · Write your own probe, then your own model
#
# Probes are plugins. A probe names the hook points it reads; inside `memlens.probing` it
# receives every activation that passes through them (TransformerLens forward hooks), and
# `result()` turns what it saw into a result with `scalars()`, `summary()` and `plot()`.
# The built-in probes are registered exactly the way yours will be, so yours runs by name
# everywhere theirs do: in `memlens.probing`, in `memlens.sweep`, and in the CLI.
#
# Our example measures **how many neurons fire per training point**. A memorising MLP block
# stores each point in its own few neurons (the dictionary of Henighan et al., 2023, and
# `02_reading_dictionaries.py`), so its activations are sparse; a generalising one reuses
# neurons across points.

# %%
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

import memlens as ml
from memlens.data import SparseFeatures
from toy_models import MLPTask

FAST = os.environ.get("MEMLENS_FAST") == "1"

# %% [markdown]
# ## A probe in a dozen lines


# %%
@dataclasses.dataclass
class FiringResult(ml.ProbeResult):
    frac_active: torch.Tensor  # [inst]: mean fraction of neurons active per point

    def scalars(self):
        return {"frac_active": float(self.frac_active.mean())}


@ml.register_probe("firing")
class FiringProbe(ml.Probe):
    hooks = ("hook_post",)  # the MLP block's post-ReLU activations

    def result(self):
        a = torch.cat(self.acts["hook_post"])  # [T, inst, d_mlp], every forward pass
        return FiringResult(frac_active=(a > 0).float().mean(dim=(0, 2)))

    # what the probe knows about sweeps (optional): the models it supports (a sweep's default
    # probes skip the others, saying so; `default = True` would make it one) and its part of a
    # sweep's report (summary columns; also figures, phase-diagram panels, summary lines)
    @classmethod
    def supports(cls, bundle):
        return bundle.representation_hook == "hook_post"

    @classmethod
    def sweep_report(cls, view, label):
        return ml.SweepSection(columns=(f"{label}.frac_active",))


print("registered probes:", ml.list_probes())

# %% [markdown]
# ## Run it by name in `memlens.probing`
#
# Two MLP blocks side by side, as two instances of one model: instance 0 sees T = 16 points
# (it memorises), instance 1 sees T = 1024 (it generalises). `Batch.lengths` tells the model
# that instance 0 only has 16 real points; the rest is padding.

# %%
task = MLPTask(SparseFeatures(24, 0.9, normalize=True), d_model=6, n_instances=2, seed=0)
full = task.sample(1024, seed=0)
train = ml.Batch(full.inputs, full.targets, full.features, lengths=torch.tensor([16, 1024]))
model = ml.get_model("mlp")(d_model=6, d_mlp=32, d_out=24, n_instances=2)
steps = 300 if FAST else 2000
run = ml.train(
    model,
    train,
    steps=steps,
    lr=3e-3,
    weight_decay=1e-2,
    warmup=steps // 10,
    batch_size=256,
    progress=False,
)
print(run.summary())

small = ml.Batch(full.inputs[:16], full.targets[:16])  # the points both instances trained on
with ml.probing(model, "firing") as (firing,):
    model(small.inputs)
print("fraction of neurons active per point, by instance:", firing.result().frac_active)
print(firing.result().summary())

# %% [markdown]
# Both instances fire about half their neurons per point (0.46-0.49 in our runs): without an L1
# penalty on the activations, AdamW memorises with a *distributed* code as well as it generalises
# with one, so this probe does not separate the regimes here. Train with
# `ml.train(..., l1=0.1)` (as the quickstart does) to see the memorising instance's code go sparse.
#
# Hooks are scoped: after the block nothing stays attached.

# %%
assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())

# %% [markdown]
# ## Run it by name in `memlens.sweep`
#
# A sweep records every probe's `scalars()` per cell, so `frac_active` becomes a column of the
# results table next to the built-in probes' numbers.

# %%
out = Path(tempfile.mkdtemp()) / "sweep-firing"
rows = ml.sweep(
    "mlp", {"T": [8, 256], "seed": [0]}, preset="smoke", probes=["firing"], out=out, progress=False
)
for r in rows:
    print(
        f"T={r['T']:4d}  train loss {r['train_loss']:.3g}  test loss {r['test_loss']:.3g}  "
        f"frac_active {r['firing.frac_active']:.3f}"
    )

# %% [markdown]
# The probe's `sweep_report` puts its column in the sweep's `summary.md` (the core's report
# names no probe: each probe the sweep ran adds its own part).

# %%
summary = Path(ml.sweeps.report(out)["summary"]).read_text()
print(next(line for line in summary.splitlines() if "firing.frac_active" in line))

# %% [markdown]
# ## Ship it from your own package
#
# `@ml.register_probe` covers a notebook. To ship the probe, put the class in your package and
# declare it in your `pyproject.toml`, in the `memlens.probes` entry-point group — exactly how
# memlens registers its own `dimensionality`, `dictionary` and `survival` probes:
#
# ```toml
# [project.entry-points."memlens.probes"]
# firing = "my_probes.firing:FiringProbe"
# ```
#
# After `pip install my-probes`, `memlens list` shows it and `memlens sweep --probes firing`
# runs it. A plugin that fails to import only warns, naming itself; it never breaks
# `import memlens`. Below we build such a package in a temporary folder (an installed
# distribution is just a module plus a `*.dist-info/entry_points.txt`) and ask a fresh
# `memlens list` process whether it sees it.

# %%
site = Path(tempfile.mkdtemp())
(site / "my_probes").mkdir()
(site / "my_probes" / "__init__.py").write_text("")
(site / "my_probes" / "firing.py").write_text(
    textwrap.dedent("""
    import memlens as ml

    class FiringProbe(ml.Probe):
        hooks = ("hook_post",)
""")
)
info = site / "my_probes-0.1.dist-info"
info.mkdir()
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-probes\nVersion: 0.1\n")
(info / "entry_points.txt").write_text(
    '[memlens.probes]\nfiring = "my_probes.firing:FiringProbe"\n'.replace('"', "")
)
env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
listing = subprocess.run(
    [sys.executable, "-m", "memlens.cli", "list"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
).stdout
print(listing)
assert "firing" in listing and "my_probes.firing:FiringProbe" in listing

# %% [markdown]
# # Part 2 · Bring your own model
#
# A model is a plugin too. Everything memlens knows about one kind of model sits in one
# `memlens.ModelBundle`, registered under the `memlens.models` entry-point group, exactly as the
# built-in bottleneck, MLP block and unembed register theirs. The core never names a model: the
# sweep, the report, the CLI, the dictionary and dimensionality probes and the tempering sampler
# all look the bundle up. So a model shipped from someone else's package runs everywhere the
# built-in ones do, with no edit to memlens.
#
# Our example is `tutorials/lookup_plugin/`, a separate package (`memlens-lookup`): a **soft
# key-value lookup**, the associative memory attention heads use to look things up. Each input
# r attends over `n_slots` learned unit-norm keys K̂ and the output mixes their values V:
#
#     attn = softmax(β K̂ r)   (hook_scores before the softmax, hook_attn after)
#     y    = V attn + b       (hook_out)
#
# A memorising lookup gives each training point a slot of its own (one-hot attention) whose
# value is that point's target: a dictionary you can read straight off K and V.
#
# What the package ships, in `memlens_lookup.py`:
#
# * `SoftLookup(memlens.HookedToyModel)`: the model, with an instance axis, its `Config` (a
#   frozen dataclass validated on construction), `per_example_loss`, its `representation_hook =
#   "hook_attn"` (what the dimensionality probe reads by default), and `circuits(train)`: the
#   named units the survival probe follows under tempering (`slot:k`, slot k's attention on its
#   key datum; `datum:j`, how much of target j the output reproduces);
# * `LookupTask`: its data recipe (sparse features seen through a fixed embedding; the target is
#   the features themselves), so a checkpoint that stores its spec can rebuild its training set;
# * `read_dictionary(model, train, options)`: its lookup table, read off the weights;
# * `BUNDLE = memlens.ModelBundle(model=SoftLookup, make_task=..., presets={"smoke": ...},
#   title=..., loss_units=..., read_dictionary=read_dictionary)`.
#
# ## Install it
#
# `pip install tutorials/lookup_plugin` would do. To keep this tutorial self-contained (no pip,
# no network) we lay the package out the way pip leaves it in site-packages: the module, and a
# `memlens_lookup-0.1.0.dist-info` folder whose `entry_points.txt` holds the entry points the
# package declares in its `pyproject.toml`. Then we put that folder on `sys.path` and ask the
# registry to read the entry points again. Nothing imports `memlens_lookup` by hand.

# %%
import json
import tomllib

from memlens.registry import MODELS

here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
plugin = here / "lookup_plugin"
project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]

plugin_site = Path(tempfile.mkdtemp())
(plugin_site / "memlens_lookup.py").write_text((plugin / "memlens_lookup.py").read_text())
dist_info = plugin_site / "memlens_lookup-0.1.0.dist-info"
dist_info.mkdir()
(dist_info / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
)
(dist_info / "entry_points.txt").write_text(
    "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in project["entry-points"].items()
    )
)
sys.path.insert(0, str(plugin_site))
assert "memlens_lookup" not in sys.modules
MODELS.reload()  # what a fresh `import memlens` does after `pip install`
assert "memlens_lookup" in sys.modules  # imported by the registry, through the entry point

# %% [markdown]
# From here on we drive the `memlens` command. In a shell you would type `memlens list`,
# `memlens sweep ...`; here `memlens.cli.main([...])` runs the same command in this process.
#
# ## `memlens list`: the registry finds it through its entry point

# %%
from memlens.cli import main


def memlens(argv: list[str]) -> None:
    """``memlens ARGV...`` in this process; stop here if the command fails."""
    status = main(argv)
    if status != 0:
        raise SystemExit(f"memlens {argv[0]} failed with status {status}")


memlens(["list"])

# %% [markdown]
# ## `memlens sweep` and `memlens report`
#
# The plugin's `smoke` preset trains T = 8 and T = 256 points on n_slots = 32 slots (seconds).
# T = 8 fits in the table; T = 256 cannot. The sweep packs both cells into one model's instance
# axis where their shapes agree, records the probes' scalars per cell and saves checkpoints with
# their data recipes; the report draws the figures with the plugin's title and loss units.

# %%
runs = Path("tutorial-output") / "06_write_your_own_probe"  # its sweep, report and temper figures
shutil.rmtree(runs, ignore_errors=True)  # a rerun starts afresh (memlens temper never overwrites)
sweep_dir = runs / "sweep-lookup"
memlens(
    ["sweep", "--model", "lookup", "--preset", "smoke", "--out", str(sweep_dir), "--no-progress"]
)
memlens(["report", str(sweep_dir)])
rows = {r["T"]: r for r in ml.sweeps.read_results(sweep_dir)[1]}

# %% [markdown]
# ## `memlens probe`: the dictionary and dimensionality probes, by name
#
# The dictionary probe finds the plugin's `read_dictionary` in its bundle. On the memorising
# cell (T = 8) it should read one slot per training point, each slot's value returning that
# point (coverage and read-back near 100%). The dimensionality probe reads the plugin's
# representation hook, `hook_attn`; Σ D* is the rank of the hidden vectors there, so T = 8
# points in general position in 32 slots give D* = 1 each.

# %%
for T in (8, 256):
    ckpt, inst = str(sweep_dir / rows[T]["checkpoint"]), str(rows[T]["instance"])
    memlens(["probe", ckpt, "--instance", inst, "--probe", "dictionary"])
    memlens(["probe", ckpt, "--instance", inst, "--probe", "dimensionality"])

# %% [markdown]
# ## `memlens temper --probes survival`
#
# Tempering samples the memorising model's posterior with localised SGLD at several
# temperatures; the survival probe streams the plugin's circuits (`slot:k`, `datum:j`) over the
# draws and reports which are noised out where. In fast mode the chains are far too short to be
# trusted (the summary marks those temperatures UNHEALTHY); the full run lets `step_size auto`
# calibrate each temperature. What the full run shows (seed 0): t = 10, 100 and 1000 are healthy
# and every active circuit (8 slots, 8 data) is already noised out at t = 10; t = 1 fails the
# step-size bias test. Going colder (`--temperatures 0.001,0.01,0.1,1`) the slots die first
# (2 at t = 0.01, 7 at t = 0.1) and the data at t = 1, but every one of those temperatures
# fails the bias test too, so that ordering is a hint, not a measurement.

# %%
ckpt, inst = str(sweep_dir / rows[8]["checkpoint"]), str(rows[8]["instance"])
sampler = (
    ["--temperatures", "1,1000", "--chains", "2", "--draws", "30", "--step-size", "1e-4"]
    if FAST
    else ["--temperatures", "1,10,100,1000", "--chains", "4", "--draws", "100"]
)
memlens(
    ["temper", ckpt, "--instance", inst, "--probes", "survival", *sampler]
    + ["--json", str(runs / "temper.json"), "--figures", str(runs / "temper"), "--no-progress"]
)
survival = json.loads((runs / "temper.json").read_text())["probes"]["survival"]
print("circuits followed:", survival["names"][:3], "...", survival["names"][-2:])

# %% [markdown]
# ## Ship it
#
# That is the whole contract: one module, and one entry point in the package's
# `pyproject.toml`, in the `memlens.models` group. After `pip install memlens-lookup`, every
# `memlens` command and every Python API takes `lookup` by name:
#
# ```toml
# [project.entry-points."memlens.models"]
# lookup = "memlens_lookup:BUNDLE"
# ```
#
# The declaration this tutorial installed, read from `tutorials/lookup_plugin/pyproject.toml`:

# %%
for group, eps in project["entry-points"].items():
    print(f'[project.entry-points."{group}"]')
    for name, target in eps.items():
        print(f'{name} = "{target}"')
