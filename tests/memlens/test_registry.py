"""Model registry: entry points, the decorator, duplicates."""

import pytest

import memlens as ml
from memlens.registry import MODELS
from toy_models import Bottleneck, MLPBlock, Unembed


def test_builtin_models_come_from_entry_points():
    assert {"bottleneck", "mlp", "unembed"} <= set(ml.list_models())
    assert ml.get_model("bottleneck") is Bottleneck
    assert ml.get_model("mlp") is MLPBlock and ml.get_model("unembed") is Unembed
    assert MODELS.source("mlp").startswith("entry point toy_models.mlp")


def test_register_model_decorator_and_duplicates(tmp_path):
    @ml.register_model("test-tiny-bottleneck")
    class Tiny(Bottleneck):
        pass

    try:
        assert ml.get_model("test-tiny-bottleneck") is Tiny
        m = Tiny(6, 2)
        ml.save(m, tmp_path / "t.pt")
        assert type(ml.load(tmp_path / "t.pt")) is Tiny  # found through the registry
        with pytest.raises(ValueError, match="duplicate model name 'test-tiny-bottleneck'"):
            ml.register_model("test-tiny-bottleneck")(type("Other", (Bottleneck,), {}))
        with pytest.raises(ValueError, match="duplicate model name 'mlp'"):
            ml.register_model("mlp")(Tiny)
    finally:
        MODELS.unregister("test-tiny-bottleneck")


def test_unregistered_model_cannot_be_saved(tmp_path):
    class Loose(Bottleneck):
        pass

    with pytest.raises(ValueError, match="not registered"):
        ml.save(Loose(4, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
