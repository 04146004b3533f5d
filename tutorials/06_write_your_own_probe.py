# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 06 · Write your own probe
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
