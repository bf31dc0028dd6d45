"""The training features: k-means init, dead-code replacement, EMA, cosine similarity, heads,
channel_dim, residual quantization, SVQ's released switches, autocast, state_dict."""

import math

import pytest
import torch
import torch.nn.functional as F

import scq
from scq.quantizers.init import INITS

from .helpers import assert_close

KINDS = [scq.VQ, scq.SCQ, scq.SVQ]


def clusters(n_per, centres, spread=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=torch.float32)
    x = centres.repeat_interleave(n_per, 0)
    return x + spread * torch.randn(x.shape, generator=gen)


def dead_codes(q, x):
    q.eval()
    with torch.no_grad():
        out = q(x)
    q.train()
    return scq.codebook_usage(out.indices, q.codebook_size)["dead_codes"]


# -- k-means ------------------------------------------------------------------------------------------


def test_kmeans_recovers_separated_clusters():
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    x = clusters(50, centres)
    torch.manual_seed(3)
    found, counts = scq.kmeans(x, 4, iters=20)
    # every true centre has a found centre within the noise
    dist = torch.cdist(centres, found)
    assert dist.min(1).values.max() < 0.1
    assert counts.sum() == 200


def test_kmeans_cosine_gives_unit_centres_and_handles_few_vectors():
    x = torch.randn(3, 5)
    centres, counts = scq.kmeans(x, 8, iters=3, cosine=True)
    assert_close(centres.norm(dim=-1), torch.ones(8), atol=1e-6)
    assert counts.sum() == 3
    with pytest.raises(ValueError, match="no vectors"):
        scq.kmeans(torch.zeros(0, 5), 4)
    with pytest.raises(ValueError, match="2-D"):
        scq.kmeans(torch.zeros(5), 4)


@pytest.mark.parametrize("cls", [scq.VQ, scq.SCQ])
def test_kmeans_init_lowers_first_step_loss(cls):
    centres = 3 * torch.randn(8, 6, generator=torch.Generator().manual_seed(1)) + 4.0
    x = clusters(40, centres)
    losses = {}
    for kmeans_init in (False, True):
        torch.manual_seed(0)
        q = cls(6, 8, kmeans_init=kmeans_init)
        out = q(x)
        losses[kmeans_init] = float(((out.quantized - x) ** 2).mean().detach())
        assert bool(q.initted)
    assert losses[True] < 0.1 * losses[False]
    assert losses[True] < 0.05


def test_kmeans_init_runs_once_and_survives_state_dict():
    q = scq.VQ(4, 8, kmeans_init=True)
    assert not bool(q.initted)
    q(torch.randn(32, 4) + 10)
    book = q.codebook.detach().clone()
    q(torch.randn(32, 4) - 10)  # a second batch does not re-initialize
    assert torch.equal(q.codebook.detach(), book)
    fresh = scq.VQ(4, 8, kmeans_init=True)
    fresh.load_state_dict(q.state_dict())
    fresh(torch.randn(32, 4))
    assert torch.equal(fresh.codebook.detach(), book)


def test_checkpoints_without_initted_load_as_initialized():
    state = scq.SCQ(4, 8).state_dict()
    del state["initted"]
    q = scq.SCQ(4, 8, kmeans_init=True)
    q.load_state_dict(state)
    q(torch.randn(16, 4) + 10)
    assert torch.equal(q.codebook.detach(), state["codebook"])


def test_kmeans_init_waits_in_eval_and_for_nonempty_batches():
    q = scq.SCQ(4, 8, kmeans_init=True)
    q.eval()
    q(torch.randn(5, 4) + 10)
    assert not bool(q.initted)
    q.train()
    q(torch.zeros(0, 4))
    assert not bool(q.initted)
    q(torch.randn(16, 4) + 10)
    assert bool(q.initted) and q.codebook.mean() > 5


def test_init_codebook_from_data_with_kmeans_iters():
    x = clusters(30, [[4.0, 4.0], [-4.0, -4.0]])
    q = scq.VQ(2, 2)
    q.init_codebook_from_data(x, kmeans_iters=10)
    assert sorted(q.codebook[:, 0].tolist()) == pytest.approx([-4.0, 4.0], abs=0.05)


# -- dead codes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", KINDS)
def test_dead_codes_are_revived(cls):
    # Codes at N(0, 1), data in a small far-away blob: nearly every code starves.
    torch.manual_seed(0)
    x = 8.0 + 0.5 * torch.randn(256, 4)
    kwargs = dict(codebook_size=16, dead_code_threshold=1.0)
    if cls is scq.SVQ:  # the lasso: an MLP's usage depends on its training, not on the codes
        kwargs.update(solver="lasso", alpha=1.0, nonneg=True)
    torch.manual_seed(0)
    starved = cls(4, **{**kwargs, "dead_code_threshold": 0.0})
    torch.manual_seed(0)
    q = cls(4, **kwargs)
    before = dead_codes(q, x)
    for _ in range(3):
        q(x)
        starved(x)
    after = dead_codes(q, x)
    assert before >= kwargs["codebook_size"] // 2, before
    assert after < before // 2, (before, after)
    assert dead_codes(starved, x) >= before - 1
    assert q.cluster_size.shape == (1, kwargs["codebook_size"])
    assert "cluster_size" in q.state_dict()


def test_running_usage_is_an_ema_of_counts():
    q = scq.VQ(2, 4, dead_code_threshold=1e-9, decay=0.5)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    x = torch.tensor([[0.1, 0.0], [0.0, 0.2], [9.0, 0.0], [0.0, 9.0], [9.0, 9.0]])
    q(x)
    assert_close(q.cluster_size[0], torch.tensor([1.0, 0.5, 0.5, 0.5]))
    q(x)
    assert_close(q.cluster_size[0], torch.tensor([1.5, 0.75, 0.75, 0.75]))


def test_scq_usage_is_weight_mass():
    q = scq.SCQ(3, 5, dead_code_threshold=1e-12, decay=0.0)
    x = torch.randn(7, 3)
    w = q(x).weights.detach()
    assert_close(q.cluster_size[0], w.sum(0), atol=1e-6)


def test_revival_does_not_break_an_accumulated_graph():
    q = scq.SCQ(4, 16, dead_code_threshold=1.0)
    x = 8 + torch.randn(32, 4)
    loss = q(x).quantized.pow(2).sum()
    loss = loss + q(x).quantized.pow(2).sum()  # codes revived between the two forwards
    loss.backward()
    assert torch.isfinite(q.codebook.grad).all()


# -- EMA ----------------------------------------------------------------------------------------------


def test_ema_update_matches_hand_computation():
    gamma, eps, K = 0.9, 1e-5, 3
    q = scq.VQ(2, K, ema_update=True, decay=gamma, eps=eps)
    E0 = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    q.reset_parameters()
    with torch.no_grad():
        q.codebook.copy_(E0)
        q.ema_embed_sum.copy_(E0.unsqueeze(0))
    assert not q.codebook.requires_grad
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 6.0]])
    q(x)
    n = gamma * torch.ones(K) + (1 - gamma) * torch.tensor([2.0, 1.0, 0.0])
    s = gamma * E0 + (1 - gamma) * torch.stack([x[0] + x[1], x[2], torch.zeros(2)])
    smoothed = (n + eps) / (n.sum() + K * eps) * n.sum()
    assert_close(q.codebook.detach(), s / smoothed.unsqueeze(-1), atol=1e-6)
    # the loss is the commitment term alone: no gradient path to a codebook that has none
    before = q.codebook.detach().clone()
    out = q(x)
    assert_close(out.loss, 0.25 * ((x - before[out.indices]) ** 2).mean(), atol=1e-6)


def test_ema_leaves_codes_in_eval_mode_and_unpicked_codes_in_place():
    q = scq.VQ(2, 3, ema_update=True, decay=0.9)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, 50.0]]))
        q.ema_embed_sum.copy_(q.codebook.unsqueeze(0))
    q.eval()
    q(torch.ones(4, 2))
    assert q.codebook[0].abs().max() == 0
    q.train()
    for _ in range(5):
        q(0.1 * torch.randn(16, 2))
    assert_close(q.codebook[1].detach(), torch.tensor([50.0, 50.0]), atol=0.05)


# -- cosine similarity, heads, channel_dim ------------------------------------------------------------


def test_cosine_vq_picks_the_largest_cosine_and_returns_unit_vectors():
    q = scq.VQ(5, 12, use_cosine_sim=True)
    x = 3 * torch.randn(40, 5)
    out = q(x)
    expected = (F.normalize(x, dim=-1) @ F.normalize(q.codebook, dim=-1).T).argmax(-1)
    assert torch.equal(out.indices, expected)
    assert_close(out.quantized.norm(dim=-1), torch.ones(40), atol=1e-5)


def test_cosine_scq_solves_on_normalized_vectors():
    q = scq.SCQ(4, 8, use_cosine_sim=True).double()
    x = 5 * torch.randn(10, 4, dtype=torch.float64)
    w = scq.solve_scq(F.normalize(x, dim=-1), F.normalize(q.codebook, dim=-1), 0.1)
    assert_close(q(x).weights, w, atol=1e-9)


@pytest.mark.parametrize("cls", KINDS)
def test_shared_heads_equal_the_quantizer_on_split_vectors(cls):
    torch.manual_seed(0)
    q = cls(8, 16, heads=4).double()
    assert q.codebook.shape == (16, 2)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out = q(x)
    assert out.weights.shape == (3, 5, 4, 16) and out.indices.shape == (3, 5, 4)
    single = cls(2, 16).double()
    single.load_state_dict({k: v for k, v in q.state_dict().items() if not k.startswith("mlp")}, strict=False)
    if cls is scq.SVQ:
        single.mlp.load_state_dict(q.mlp.state_dict())
    ref = single(x.reshape(3, 5, 4, 2))
    assert_close(out.quantized, ref.quantized.reshape(3, 5, 8), atol=1e-9)
    assert_close(out.weights, ref.weights, atol=1e-9)


def test_separate_codebooks_per_head():
    q = scq.SCQ(6, 10, heads=2, separate_codebook_per_head=True, lam=0.5).double()
    assert q.codebook.shape == (2, 10, 3)
    x = torch.randn(7, 6, dtype=torch.float64)
    out = q(x)
    for h in range(2):
        w = scq.solve_scq(x[:, 3 * h: 3 * h + 3], q.codebook[h], 0.5)
        assert_close(out.weights[:, h], w, atol=1e-9)
    assert q.last_info.converged
    svq = scq.SVQ(6, 10, heads=2, separate_codebook_per_head=True)
    assert len(svq.mlp) == 2 and svq.mlp[1][0].in_features == 3


@pytest.mark.parametrize("cls", KINDS)
def test_channel_dim_takes_feature_maps(cls):
    torch.manual_seed(0)
    q = cls(3, 8, channel_dim=1)
    img = torch.randn(2, 3, 4, 5)
    out = q(img)
    assert out.quantized.shape == img.shape
    assert out.weights.shape == (2, 4, 5, 8) and out.indices.shape == (2, 4, 5)
    q.channel_dim = None
    ref = q(img.permute(0, 2, 3, 1))
    assert_close(out.quantized, ref.quantized.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="channel_dim"):
        cls(3, 8, channel_dim=1)(torch.randn(2, 4, 3))


# -- residual quantization ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vq", "scq"])
def test_residual_stages_lower_the_error(kind):
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    rq = scq.ResidualQuantizer(4, 3, 16, quantizer=kind, kmeans_init=True)
    out = rq(x)
    assert out.weights.shape == (256, 3, 16) and out.indices.shape == (256, 3)
    errors = [float(((rq.quantize_first(x, n).quantized - x) ** 2).mean().detach()) for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    # quantized is the sum of the stages' reconstructions of the running residual
    residual, total = x, torch.zeros_like(x)
    for stage in rq.layers:
        q = stage(residual).quantized
        residual, total = residual - q, total + q
    assert_close(out.quantized, total, atol=1e-5)


def test_residual_vq_passes_the_identity_gradient():
    rq = scq.ResidualQuantizer(3, 2, 8)
    x = torch.randn(5, 3, requires_grad=True)
    rq(x).quantized.sum().backward()
    assert_close(x.grad, torch.ones(5, 3))


def test_residual_scq_gradcheck():
    torch.manual_seed(0)
    rq = scq.ResidualQuantizer(3, 2, 6, quantizer="scq", lam=0.5).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rq(t).quantized, (x,), atol=1e-6)


def test_residual_from_mixed_stages_and_errors():
    rq = scq.ResidualQuantizer.from_stages([scq.SCQ(4, 8), scq.VQ(4, 8)], channel_dim=1)
    out = rq(torch.randn(2, 4, 3))
    assert out.quantized.shape == (2, 4, 3) and out.indices.shape == (2, 3, 2)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        scq.ResidualQuantizer(4, 2, 8, quantizer="fsq")
    with pytest.raises(ValueError, match="same dim"):
        scq.ResidualQuantizer.from_stages([scq.VQ(4, 8), scq.VQ(5, 8)])
    with pytest.raises(ValueError, match="same codebook_size"):
        scq.ResidualQuantizer.from_stages([scq.VQ(4, 8), scq.VQ(4, 9)])
    with pytest.raises(TypeError, match="stage 0"):
        scq.ResidualQuantizer.from_stages([torch.nn.Linear(4, 4)])
    with pytest.raises(ValueError, match="n must be"):
        rq.quantize_first(torch.randn(2, 4, 3), 3)


# -- SVQ parity with the released code ----------------------------------------------------------------


def test_svq_init_scales():
    D = 16
    assert scq.SVQ(D, 4000, init="kaiming").codebook.abs().max() <= math.sqrt(6 / D)
    assert scq.SVQ(D, 4000, init="kaiming").codebook.abs().max() > 0.9 * math.sqrt(6 / D)
    assert scq.SVQ(D, 4000, init="kaiming_linear").codebook.abs().max() <= 1 / math.sqrt(D)
    assert scq.SVQ(D, 4000, init="trunc").codebook.abs().max() <= 2.0
    orth = scq.SVQ(D, 8, init="orthogonal").codebook
    assert_close(orth @ orth.T, torch.eye(8), atol=1e-5)
    assert (scq.SVQ(D, 100, init="sparse").codebook == 0).float().mean() >= 0.85
    for init in INITS:
        assert torch.isfinite(scq.VQ(4, 8, init=init).codebook).all()


def test_svq_mlp_switches():
    lin = scq.SVQ(4, 50, nonlinear=False)
    assert len(lin.mlp) == 1 and lin.mlp[0].out_features == 50
    x = torch.randn(6, 4)
    assert_close(lin(x).weights, lin.mlp[0](x))
    no_hid = scq.SVQ(4, 50, hid_relu=False)
    assert isinstance(no_hid.mlp[1], torch.nn.Identity)
    out_relu = scq.SVQ(4, 50, out_relu=True)
    assert out_relu.relu_output and (out_relu(x).weights >= 0).all()
    frozen = scq.SVQ(4, 50, freeze_projection=True, freeze_codebook=False)
    frozen(x).quantized.sum().backward()
    assert all(p.grad is None for p in frozen.mlp.parameters()) and frozen.codebook.grad is not None
    assert "freeze_projection=True" in repr(frozen)


def test_perp_2_and_3_follow_the_released_formula():
    w = torch.randn(12, 30, generator=torch.Generator().manual_seed(0))
    w[:, 3] += 6
    got = scq.codebook_usage(w, 30)
    for k, key in ((2, "perp_2"), (3, "perp_3")):
        hits = (((w - w.mean()) / w.std()).abs() > k).float()
        p = hits.sum(0) / hits.sum()
        assert got[key] == pytest.approx(float(torch.exp(-(p * torch.log(p + 1e-10)).sum())), rel=1e-5)
    hard = scq.codebook_usage(torch.tensor([0, 0, 1, 2]), 4)
    assert hard["perp_2"] == pytest.approx(hard["perplexity"])


# -- autocast, state and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("cls,tol", [(scq.VQ, 1e-6), (scq.SCQ, 1e-4), (scq.SVQ, 0.1)])
def test_cpu_bfloat16_autocast_matches_float32(cls, tol):
    torch.manual_seed(0)
    q = cls(8, 32)
    x = torch.randn(64, 8)
    ref = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x)
    assert torch.isfinite(out.quantized).all() and torch.isfinite(out.loss)
    # VQ and SCQ solve in float32 under autocast; SVQ's MLP runs in bfloat16 (as any layer)
    scale = ref.quantized.abs().max()
    assert (out.quantized.float() - ref.quantized).abs().max() <= tol * scale


def test_training_buffers_round_trip():
    q = scq.VQ(4, 8, ema_update=True, kmeans_init=True, dead_code_threshold=0.5)
    q(torch.randn(32, 4))
    state = q.state_dict()
    assert {"codebook", "initted", "cluster_size", "ema_cluster_size", "ema_embed_sum"} <= set(state)
    again = scq.VQ(4, 8, ema_update=True, kmeans_init=True, dead_code_threshold=0.5)
    again.load_state_dict(state)
    for k in state:
        assert torch.equal(again.state_dict()[k], state[k])


def test_bad_training_options():
    with pytest.raises(ValueError, match="divisible by heads"):
        scq.VQ(6, 8, heads=4)
    with pytest.raises(ValueError, match="decay must be in"):
        scq.SCQ(4, 8, decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold must be"):
        scq.SVQ(4, 8, dead_code_threshold=-1)
    with pytest.raises(TypeError, match="kmeans_iters must be an int"):
        scq.VQ(4, 8, kmeans_iters=2.5)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        scq.VQ(4, 8, channel_dim="1")
    with pytest.raises(ValueError, match="channel_dim=3 is out of range"):
        scq.VQ(4, 8, channel_dim=3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="init must be one of"):
        scq.VQ(4, 8, init="he")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls,tol", [(scq.VQ, 1e-6), (scq.SCQ, 1e-4)])
def test_cuda_autocast_matches_float32(cls, tol, dtype):
    torch.manual_seed(0)
    q = cls(8, 32, kmeans_init=True, dead_code_threshold=0.5).cuda()
    x = torch.randn(256, 8, device="cuda")
    q.eval()
    ref = q(x)
    with torch.autocast("cuda", dtype=dtype):
        out = q(x)
    assert torch.isfinite(out.quantized).all() and torch.isfinite(out.loss)
    assert (out.quantized.float() - ref.quantized).abs().max() <= tol * ref.quantized.abs().max()


# -- return_weights: dense, sparse or none ------------------------------------------------------------


@pytest.mark.parametrize("cls,kwargs", [(scq.VQ, {}), (scq.SCQ, {}), (scq.SCQ, {"method": "relaxed"}),
                                        (scq.SVQ, {"solver": "lasso", "alpha": 0.3}), (scq.SVQ, {}),
                                        (scq.SCQ, {"heads": 2}),
                                        (scq.SCQ, {"heads": 2, "separate_codebook_per_head": True})])
def test_sparse_and_no_weights_agree_with_dense(cls, kwargs):
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8, requires_grad=True)
    dense = cls(8, 16, **kwargs)
    out = dense(x)
    for mode in ("sparse", "none"):
        q = cls(8, 16, return_weights=mode, **kwargs)
        q.load_state_dict(dense.state_dict())
        got = q(x)
        assert_close(got.quantized, out.quantized, atol=1e-6)
        assert torch.equal(got.indices, out.indices)
        if mode == "none":
            assert got.weights is None
            continue
        assert isinstance(got.weights, scq.SparseWeights)
        assert got.weights.indices.shape[:-1] == out.weights.shape[:-1]
        assert_close(got.weights.to_dense(), out.weights, atol=1e-6)
        assert scq.codebook_usage(got.weights, 16) == pytest.approx(scq.codebook_usage(out.weights, 16), nan_ok=True)
    got.quantized.sum().backward()  # the sparse path stays differentiable
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cls,kwargs", [(scq.VQ, {}), (scq.VQ, {"ema_update": True}), (scq.SCQ, {}),
                                        (scq.SVQ, {"solver": "lasso", "alpha": 0.3}),
                                        (scq.SCQ, {"heads": 2, "separate_codebook_per_head": True})])
@pytest.mark.parametrize("mode", ["sparse", "none"])
def test_training_features_run_alike_on_sparse_and_no_weights(cls, kwargs, mode):
    # Running usage and dead-code re-seeding read the weights' mass: with sparse weights, or none
    # returned, the same as with dense ones (VQ's usage once asked a SparseWeights for its dtype).
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    opts = dict(kmeans_init=True, kmeans_iters=2, dead_code_threshold=0.5, **kwargs)
    dense, q = cls(8, 16, **opts), cls(8, 16, return_weights=mode, **opts)
    q.load_state_dict(dense.state_dict())
    for module in (dense, q):
        torch.manual_seed(0)  # the same k-means and re-seeding draws
        for _ in range(2):
            module(x)
    assert dense.cluster_size.abs().sum() > 0
    assert_close(q.cluster_size, dense.cluster_size, atol=1e-6)
    assert_close(q.codebook, dense.codebook, atol=1e-6)


def test_vq_sparse_weights_are_one_slot_and_pgd_keeps_its_working_set():
    assert scq.VQ(4, 64, return_weights="sparse")(torch.randn(10, 4)).weights.indices.shape == (10, 1)
    w = scq.SCQ(4, 256, return_weights="sparse")(torch.randn(10, 4)).weights
    assert w.indices.shape[-1] < 256  # the solver's support slots, not K
    with pytest.raises(ValueError, match="return_weights must be one of"):
        scq.SCQ(4, 8, return_weights="coo")


def test_residual_stacks_sparse_weights():
    rq = scq.ResidualQuantizer(4, 3, 32, quantizer="scq", return_weights="sparse")
    out = rq(torch.randn(6, 4))
    assert out.weights.indices.shape[:2] == (6, 3)
    assert scq.ResidualQuantizer(4, 2, 32, return_weights="none")(torch.randn(6, 4)).weights is None


def test_feature_names_match_the_base_signature():
    import inspect

    from scq.quantizers.base import FEATURES, Quantizer

    params = list(inspect.signature(Quantizer.__init__).parameters)
    assert set(FEATURES) == set(params[params.index("learnable_codebook"):])
    with pytest.raises(TypeError, match="unknown option|unexpected|takes no"):
        scq.SCQ(4, 8, kmeans_inits=True)  # a typo is not silently a solver option


# -- decode: from codes back to vectors --------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: scq.VQ(8, 16),
    lambda: scq.SCQ(8, 16, lam=0.1),
    lambda: scq.SVQ(8, 32),
    lambda: scq.SCQ(8, 16, heads=2),
    lambda: scq.SCQ(8, 16, heads=2, separate_codebook_per_head=True),
    lambda: scq.SVQ(8, 32, heads=2, separate_codebook_per_head=True),
    lambda: scq.SCQ(8, 16, use_cosine_sim=True),
    lambda: scq.SCQ(8, 16, return_weights="sparse"),
    lambda: scq.SVQ(8, 32, return_weights="sparse"),  # every code in every row: a view of the weights
])
def test_decode_of_the_weights_gives_the_quantized_vectors(make):
    q = make()
    x = torch.randn(3, 5, 8)
    out = q(x)
    assert torch.allclose(q.decode(out.weights), out.quantized, atol=1e-5)
    hard = q.get_output_from_indices(out.indices)
    assert hard.shape == x.shape
    # The hard codes are the codebook's rows (normalized with cosine similarity).
    books = q._codebook(torch.float32)
    first = books[0][out.indices.reshape(-1, q.heads)[0, 0]]
    assert torch.allclose(hard.reshape(-1, q.heads, q.codebook_dim)[0, 0], first)


def test_decode_keeps_the_channel_layout_and_sees_changed_weights():
    q = scq.SCQ(4, 8, lam=0.1, channel_dim=1)
    x = torch.randn(2, 4, 3, 3)
    out = q(x)
    assert torch.allclose(q.decode(out.weights), out.quantized, atol=1e-5)
    one_hot = torch.nn.functional.one_hot(out.indices, 8).float()
    assert torch.allclose(q.decode(one_hot), q.get_output_from_indices(out.indices))
    assert torch.allclose(q.decode(one_hot)[0, :, 0, 0], q.codebook[out.indices[0, 0, 0]])


def test_residual_decode_of_the_first_stages():
    r = scq.ResidualQuantizer(8, 3, 16, quantizer="scq", lam=0.1)
    x = torch.randn(10, 8)
    out = r(x)
    assert torch.allclose(r.decode(out.weights), out.quantized, atol=1e-5)
    assert torch.allclose(r.decode(out.weights[:, :2]), r.quantize_first(x, 2).quantized, atol=1e-5)
    v = scq.ResidualQuantizer(8, 3, 16)
    out = v(x)
    assert torch.allclose(v.get_output_from_indices(out.indices), out.quantized, atol=1e-5)


def test_decode_rejects_bad_input():
    q = scq.SCQ(8, 16, heads=2)
    with pytest.raises(ValueError, match=r"weights must have shape \(\.\.\., 16\)"):
        q.decode(torch.rand(3, 2, 15))
    with pytest.raises(ValueError, match="heads=2"):
        q.decode(torch.rand(3, 16))
    with pytest.raises(TypeError, match="integer tensor"):
        q.get_output_from_indices(torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
        q.get_output_from_indices(torch.tensor([[0, 16]]))
    r = scq.ResidualQuantizer(8, 2, 16)
    with pytest.raises(ValueError, match="1 <= Q <= 2"):
        r.decode(torch.rand(4, 3, 16))


@pytest.mark.parametrize("make", [lambda: scq.SCQ(8, 32, kmeans_init=True, dead_code_threshold=2.0),
                                  lambda: scq.VQ(8, 32, kmeans_init=True, dead_code_threshold=2.0)], ids=["scq", "vq"])
def test_training_features_under_gradient_checkpointing(make):
    # torch.utils.checkpoint runs the forward again inside the backward. That recomputation ran the
    # codebook's upkeep a second time (k-means init, dead codes, the usage EMA): the codebook changed
    # under it (SCQ raised CheckpointError: another working-set width) and every batch counted twice.
    # Now it updates nothing: three steps match the same training without checkpointing.
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    q, layer = make(), torch.nn.Linear(8, 8)
    twin, twin_layer = make(), torch.nn.Linear(8, 8)
    twin.load_state_dict(q.state_dict())
    twin_layer.load_state_dict(layer.state_dict())
    for step in range(3):
        x = torch.randn(64, 8) * (1 + step)  # drifting inputs: codes die and are re-seeded
        torch.manual_seed(10 + step)  # (re-seeding draws from the batch at random)
        out = checkpoint(lambda v: q(layer(v)), x, use_reentrant=False)
        (out.quantized.square().sum() + out.loss).backward()
        torch.manual_seed(10 + step)
        ref = twin(twin_layer(x))
        (ref.quantized.square().sum() + ref.loss).backward()
        assert torch.equal(q.cluster_size, twin.cluster_size), step
        assert torch.equal(q.codebook, twin.codebook), step
        assert_close(layer.weight.grad, twin_layer.weight.grad)
