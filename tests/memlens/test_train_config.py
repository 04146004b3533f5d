"""One typed object for training settings: ``TrainConfig`` is used by ``train`` (config or keyword
form), sweeps, presets and the CLI, and a bad field is refused once, by its one check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import memlens as ml
from memlens import TrainConfig
from memlens.data import SparseFeatures
from toy_models import Bottleneck


def _data():
    return SparseFeatures(n_features=12, sparsity=0.7).sample(T=16, n_instances=2, seed=0)


def test_config_form_and_keyword_form_train_the_same_weights():
    a, b = Bottleneck(12, 2, n_instances=2, seed=3), Bottleneck(12, 2, n_instances=2, seed=3)
    cfg = TrainConfig(steps=40, lr=1e-2, warmup=5, batch_size=8, seed=1)
    ra = ml.train(a, _data(), cfg, progress=False)
    rb = ml.train(b, _data(), steps=40, lr=1e-2, warmup=5, batch_size=8, seed=1, progress=False)
    assert torch.equal(a.W, b.W) and torch.equal(ra.history, rb.history)
    assert ra.config == rb.config
    assert ra.config["lr"] == 1e-2 and ra.config["batch_size"] == 8
    # keywords given with a config replace its fields
    c = Bottleneck(12, 2, n_instances=2, seed=3)
    rc = ml.train(c, _data(), cfg, steps=20, progress=False)
    assert rc.steps == 20 and len(rc.history) == 20


def test_the_config_is_frozen_and_round_trips():
    cfg = TrainConfig(steps=5, schedule="constant")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 6
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.user_errors
@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("lr", -1.0), ("weight_decay", float("nan")), ("warmup", 99),
     ("schedule", "linear"), ("batch_size", 2.5), ("seed", 1.5), ("l1", -0.1)],
)  # fmt: skip
def test_a_bad_field_is_refused_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"steps": 10, field: value})
    with pytest.raises(ValueError, match=field):  # the keyword form: the same check
        ml.train(Bottleneck(12, 2, n_instances=2), _data(), progress=False,
                 **{"steps": 10, field: value})  # fmt: skip
    with pytest.raises(TypeError, match="unknown training setting.*'stpes'"):
        ml.train(Bottleneck(12, 2, n_instances=2), _data(), stpes=10, progress=False)


class _Refused(ValueError):
    pass


@pytest.mark.user_errors
def test_train_sweeps_and_the_cli_check_training_settings_by_the_one_check(monkeypatch, tmp_path):
    """Every path goes through TrainConfig.validate: replaced by a refusal, each path refuses."""
    from memlens import cli

    def refuse(self):
        raise _Refused(f"the one check refused {self.lr!r}")

    monkeypatch.setattr(TrainConfig, "validate", refuse)
    with pytest.raises(_Refused):
        ml.train(Bottleneck(12, 2, n_instances=2), _data(), steps=10, progress=False)
    with pytest.raises(ValueError, match="train setting the one check refused"):
        ml.sweep("bottleneck", {"T": [3]}, preset="smoke", probes=(), out=tmp_path / "s",
                 progress=False)  # fmt: skip
    assert not (tmp_path / "s").exists()
    ck = tmp_path / "m.pt"
    assert cli.main(["train", "--model", "bottleneck", "--preset", "smoke", "--T", "3",
                     "--out", str(ck), "--no-progress"]) != 0  # fmt: skip
    assert not ck.exists()


def test_every_preset_of_every_model_holds_valid_train_settings():
    for name in ml.list_models():
        bundle = ml.get_bundle(name)
        for preset, p in bundle.presets.items():
            cfg = TrainConfig.of({**ml.sweeps.TRAIN_DEFAULTS, **p["train"]})
            assert cfg.steps >= 1, (name, preset)


@pytest.mark.user_errors
@pytest.mark.parametrize(
    "preset, match",
    [({"grid": {"seed": [0]}}, "needs T"),
     ({"grid": {"T": [3]}, "train": {"stpes": 3}}, r"unknown setting\(s\) \['stpes'\]"),
     ({"grid": {"T": [3]}, "train": {"steps": 3, "warmup": 9}}, "warmup"),
     ({"grid": {"T": [3]}, "tasks": {}}, "grid, task and train")],
)  # fmt: skip
def test_a_bad_preset_is_refused_when_its_bundle_is_made(preset, match):
    from toy_models.bottleneck import BUNDLE

    with pytest.raises(ValueError, match=match):
        dataclasses.replace(BUNDLE, presets={"bad": preset})
    good = dataclasses.replace(BUNDLE, presets={"ok": {"grid": {"T": [3]}}})
    assert isinstance(good.presets["ok"], ml.Preset) and good.preset("ok")["grid"] == {"T": [3]}
