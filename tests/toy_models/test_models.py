"""The three toy models as TransformerLens hooked modules with an instance axis."""

import math

import pytest
import torch
from transformer_lens import HookedRootModule

import memlens as ml
from memlens.data import Batch, SparseFeatures
from toy_models import Bottleneck, MLPBlock, MLPTask, Unembed, UnembedTask

INST = 3


def _models_and_inputs():
    feats = SparseFeatures(12, 0.7)
    x = feats.sample(7, INST, seed=1)
    mlp_task = MLPTask(feats, d_model=5, n_instances=INST, seed=2)
    un_task = UnembedTask(feats, d_model=5, n_instances=INST, seed=3)
    return [
        (
            Bottleneck(12, 4, n_instances=INST),
            x,
            {"hook_in": 12, "hook_hidden": 4, "hook_pre": 12, "hook_out": 12},
        ),
        (
            MLPBlock(5, 9, 12, n_instances=INST),
            mlp_task.sample(7, seed=4).inputs,
            {"hook_in": 5, "hook_pre": 9, "hook_post": 9, "hook_out": 12},
        ),
        (
            Unembed(5, 13, n_instances=INST),
            un_task.sample(7, seed=5).inputs,
            {"hook_in": 5, "hook_logits": 13},
        ),
    ]


@pytest.mark.parametrize(
    "model,x,widths", _models_and_inputs(), ids=["bottleneck", "mlp", "unembed"]
)
def test_run_with_cache_returns_every_hook_batch_inst_first(model, x, widths):
    assert isinstance(model, HookedRootModule)
    out, cache = model.run_with_cache(x)
    assert isinstance(cache, dict)
    assert set(cache) == set(widths) == set(model.hook_dict)
    for name, width in widths.items():
        assert tuple(cache[name].shape) == (7, INST, width), name
    assert torch.equal(cache[list(widths)[-1]], out)
    assert not any(
        hp.has_hooks() if hasattr(hp, "has_hooks") else hp._forward_hooks
        for hp in model.hook_dict.values()
    )


def _no_hooks(model):
    return all(
        len(hp._forward_hooks) == 0 and len(hp._backward_hooks) == 0
        for hp in model.hook_dict.values()
    )


def test_zero_ablating_hidden_leaves_relu_of_bias():
    model = Bottleneck(12, 4, n_instances=INST)
    with torch.no_grad():
        model.b.copy_(torch.randn_like(model.b))
    x = SparseFeatures(12, 0.5).sample(6, INST, seed=0)
    out = model.run_with_hooks(x, fwd_hooks=[("hook_hidden", lambda a, hook: torch.zeros_like(a))])
    expected = torch.relu(model.b.detach())[None].expand(6, INST, 12)
    assert torch.equal(out, expected)
    assert not torch.equal(model(x), expected)  # the ablation did something
    assert _no_hooks(model)


def test_zero_ablating_post_leaves_output_bias():
    model = MLPBlock(5, 9, 12, n_instances=INST)
    with torch.no_grad():
        model.b_out.copy_(torch.randn_like(model.b_out))
    r = torch.randn(6, INST, 5)
    out = model.run_with_hooks(r, fwd_hooks=[("hook_post", lambda a, hook: torch.zeros_like(a))])
    assert torch.equal(out, model.b_out.detach()[None].expand(6, INST, 12))
    assert _no_hooks(model)


def test_no_hook_survives_an_exception_inside_hooks_context():
    model = Bottleneck(12, 4, n_instances=INST)
    x = torch.rand(4, INST, 12)
    seen = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[("hook_hidden", lambda a, hook: seen.append(a.shape))]),
    ):
        model(x)
        raise RuntimeError("boom")
    assert seen and _no_hooks(model)

    def bad_hook(a, hook):
        raise RuntimeError("boom in hook")

    with pytest.raises(RuntimeError, match="boom in hook"):
        model.run_with_hooks(x, fwd_hooks=[("hook_out", bad_hook)])
    assert _no_hooks(model)


def test_instances_are_independent_and_seeded():
    feats = SparseFeatures(20, 0.8, normalize=True)
    x = feats.sample(32, 2, seed=0)
    x_changed = x.clone()
    x_changed[:, 0] = feats.sample(32, 1, seed=99)[:, 0]

    def fit(data):
        m = Bottleneck(20, 3, n_instances=2, seed=5)
        ml.train(m, data, steps=150, lr=1e-2, weight_decay=1e-2, warmup=10, progress=False)
        return m.W.detach().clone(), m.b.detach().clone()

    W_a, b_a = fit(x)
    W_b, b_b = fit(x_changed)
    W_c, _ = fit(x)
    assert torch.equal(W_a[1], W_b[1]) and torch.equal(b_a[1], b_b[1])  # bit-identical
    assert not torch.allclose(W_a[0], W_b[0])  # instance 0 did change
    assert torch.equal(W_a, W_c)  # same seed, same weights


def test_minibatch_instances_independent_of_instance_count():
    """Instance i's init and data stream do not depend on how many instances share the model."""
    feats = SparseFeatures(10, 0.8)
    m4 = Bottleneck(10, 3, n_instances=4, seed=1)
    m1 = Bottleneck(10, 3, n_instances=1, seed=1)
    assert torch.equal(m4.W.detach()[:1], m1.W.detach())
    assert torch.equal(feats.sample(9, 4, seed=3)[:, :1], feats.sample(9, 1, seed=3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bottleneck(
            12, 3, n_instances=2, tied=False, importance=[0.9**i for i in range(12)]
        ),
        lambda: MLPBlock(5, 9, 12, n_instances=2, seed=3),
        lambda: Unembed(5, 13, n_instances=2, seed=4),
    ],
    ids=["bottleneck", "mlp", "unembed"],
)
def test_save_load_round_trip(tmp_path, make):
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "m.pt"
    ml.save(model, path)
    loaded = ml.load(path)
    assert type(loaded) is type(model)
    assert loaded.cfg == model.cfg
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_load_truncated_and_unknown_class_give_clear_errors(tmp_path):
    model = Bottleneck(12, 3)
    path = tmp_path / "m.pt"
    ml.save(model, path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ml.load(tmp_path / "cut.pt")
    payload = torch.load(path, weights_only=True)
    payload["model"] = "no-such-model"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*bottleneck"):
        ml.load(tmp_path / "bad.pt")


@pytest.mark.user_errors
def test_bad_input_raises_naming_the_field():
    with pytest.raises(ValueError, match="d_hidden"):
        Bottleneck(10, 0)
    with pytest.raises(ValueError, match="d_mlp"):
        MLPBlock(4, -1, 3)
    with pytest.raises(ValueError, match=r"\[batch, inst=2, feat=10\]"):
        Bottleneck(10, 2, n_instances=2)(torch.rand(5, 2, 11))
    with pytest.raises(ValueError, match=r"\[batch, inst=2, d_model=4\]"):
        MLPBlock(4, 8, 3, n_instances=2)(torch.rand(5, 4))
    with pytest.raises(ValueError, match="instance-count mismatch.*3 instances.*n_instances=2"):
        ml.train(Bottleneck(10, 2, n_instances=2), torch.rand(5, 3, 10), steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*bottleneck"):
        ml.get_model("nope")
    with pytest.raises(ValueError, match="importance"):
        Bottleneck(10, 2, importance=[1.0] * 9)


def test_losses_match_hand_computation():
    b = Bottleneck(4, 2, n_instances=1, importance=[1.0, 2.0, 0.0, 1.0])
    with torch.no_grad():
        b.W.copy_(torch.tensor([[[1.0, 0, 0, 1], [0, 1, 0, 0]]]))
        b.b.copy_(torch.tensor([[0.0, -0.5, 0, 0]]))
    x = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    # h = (1, 1); pre = Wᵀh + b = (1, 0.5, 0, 1); out = (1, 0.5, 0, 1)
    # loss = 1*(0)^2 + 2*(0.5-1)^2 + 0*(0-1)^2 + 1*(1-0)^2 = 0.5 + 1 = 1.5 (summed over features)
    assert b.loss(x).item() == pytest.approx(1.5)
    u = Unembed(2, 3)
    with torch.no_grad():
        u.W_U.copy_(torch.tensor([[[1.0, 0], [0, 1], [0, 0]]]))
        u.b_U.zero_()
    batch = Batch(inputs=torch.tensor([[[2.0, 0.0]]]), targets=torch.tensor([[0]]))
    want = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert u.loss(batch).item() == pytest.approx(want, rel=1e-6)


def test_chunked_loss_equals_unchunked(monkeypatch):
    import memlens.hooked as hooked

    feats = SparseFeatures(50, 0.9)
    x = feats.sample(64, 3, seed=0)
    m = Bottleneck(50, 3, n_instances=3)
    full = m.loss(x)
    monkeypatch.setattr(hooked, "LOSS_CHUNK_ELEMENTS", 3 * 50 * 5)  # 5-row chunks
    assert torch.allclose(m.loss(x), full, rtol=1e-6)


@pytest.fixture(scope="module")
def tms_models():
    """One training loop for both TMS references (background §4): instances 0-5 are the
    pentagon setting (1-S = 0.05, uniform importance), 6-7 the dense setting with importance
    0.9^i. Infinite data, AdamW 1e-3, batch 1024, 10k steps."""
    n, inst = 5, 8
    sparsity = [0.95] * 6 + [0.0] * 2
    importance = [[1.0] * n] * 6 + [[0.9**i for i in range(n)]] * 2
    feats = SparseFeatures(n, sparsity, importance=importance)
    model = Bottleneck(n, 2, n_instances=inst, importance=importance, seed=0)
    ml.train(
        model,
        feats,
        steps=10_000,
        lr=1e-3,
        batch_size=1024,
        schedule="constant",
        seed=0,
        progress=False,
    )
    return model


def test_tms_pentagon(tms_models):
    W = tms_models.W.detach()
    good = 0
    for i in range(6):
        norms = W[i].norm(dim=0)
        ang = torch.sort(torch.atan2(W[i, 1], W[i, 0])).values
        gaps = torch.rad2deg(torch.diff(torch.cat([ang, ang[:1] + 2 * math.pi])))
        regular_norms = (norms.max() - norms.min()) / norms.mean() < 0.10
        regular_angles = bool(((gaps - 72).abs() < 5).all())
        good += regular_norms and regular_angles
    assert good >= 4, f"only {good}/6 instances learned a regular pentagon"


def test_tms_dense_importance_keeps_top_two_orthogonal(tms_models):
    W = tms_models.W.detach()
    for i in (6, 7):
        norms = W[i].norm(dim=0)
        assert (norms[:2] > 0.9).all() and (norms[2:] < 0.1).all(), norms
        cos = (W[i, :, 0] @ W[i, :, 1]) / (norms[0] * norms[1])
        assert abs(cos) < 0.05
