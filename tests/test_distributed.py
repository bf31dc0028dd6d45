"""Two processes on the gloo backend (CPU): codebooks stay identical across ranks, and the
statistics equal those of one process on the union of the data, with ranks seeing different
batch sizes (an empty one included)."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scq

from .helpers import assert_close

WORLD = 2
DIM, K = 4, 8


def batches(seed: int = 0):
    """Per step, the rows of each rank (rank 1 gets an empty batch at step 1)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(40, 24), (30, 0), (16, 36)]
    return [[2.0 * torch.randn(n, DIM, generator=gen) + 1.0 for n in step] for step in sizes]


def make_quantizers():
    torch.manual_seed(0)
    return {
        "vq_ema": scq.VQ(DIM, K, kmeans_init=True, ema_update=True, decay=0.9),
        "scq": scq.SCQ(DIM, K, kmeans_init=True, dead_code_threshold=1e-6, lam=0.2),
        "svq_heads": scq.SVQ(DIM, K, heads=2, dead_code_threshold=1e-6),  # MLP weights: never dead
    }


def run(quantizers, steps, rank: "int | None"):
    """Train-mode forwards on each step's rows (of ``rank``, or the union when None); returns the
    state and usage metrics of every quantizer."""
    usage = {name: scq.CodebookUsage(K) for name in quantizers}
    for step in steps:
        x = step[rank] if rank is not None else torch.cat(step)
        for name, q in quantizers.items():
            out = q(x)
            usage[name].update(out.indices)
    return {name: ({k: v.clone() for k, v in q.state_dict().items()}, usage[name].compute())
            for name, q in quantizers.items()}


def revival_run(rank: int):
    """Dead codes on every rank: the re-seeded codes must agree (drawn on rank 0, broadcast)."""
    torch.manual_seed(100 + rank)  # different local randomness on purpose
    q = scq.SCQ(DIM, K, dead_code_threshold=5.0)
    torch.manual_seed(0)
    q.reset_parameters()
    gen = torch.Generator().manual_seed(rank)
    for n in (20, 0 if rank else 12, 7):
        q(5 + torch.randn(n, DIM, generator=gen))
    return q.codebook.detach().clone()


def init_run(rank: int):
    """init_codebook_from_data on each rank's own data: the same codes and usage everywhere."""
    torch.manual_seed(200 + rank)  # different local randomness on purpose
    q = scq.VQ(DIM, K, dead_code_threshold=1.0, heads=2, separate_codebook_per_head=True)
    q.init_codebook_from_data(torch.randn(10 + 20 * rank, DIM), kmeans_iters=3)
    return {k: v.clone() for k, v in q.state_dict().items()}


def ddp_run(rank: int):
    """A model with an SCQ layer under DistributedDataParallel, a few optimizer steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), scq.SCQ(DIM, K, kmeans_init=True, dead_code_threshold=0.5))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(10 + rank)
    for n in (16, 8 + 8 * rank, 12):
        out = ddp(torch.randn(n, DIM, generator=gen))
        loss = (out.quantized ** 2).mean() + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model[1].codebook.detach().clone()


def _worker(rank: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(1234)  # rank 0's draws then match the single process's
        results = {"stats": run(make_quantizers(), batches(), rank), "revival": revival_run(rank), "ddp": ddp_run(rank),
                   "init": init_run(rank)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process gloo run hung")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_codebooks_and_buffers_are_identical_across_ranks(ranks):
    for name, (state, metrics) in ranks[0]["stats"].items():
        other_state, other_metrics = ranks[1]["stats"][name]
        for key in state:
            assert torch.equal(state[key], other_state[key]), (name, key)
        assert metrics == other_metrics, name


def test_statistics_equal_one_process_on_the_union(ranks):
    torch.manual_seed(1234)
    single = run(make_quantizers(), batches(), None)
    for name, (state, metrics) in single.items():
        dist_state, dist_metrics = ranks[0]["stats"][name]
        for key in state:
            assert_close(dist_state[key].float(), state[key].float(), atol=1e-5, msg=f"{name}.{key}")
        assert dist_metrics["vectors"] == metrics["vectors"] == sum(n for n in (40, 24, 30, 0, 16, 36)) * (
            2 if name == "svq_heads" else 1)
        for key in ("perplexity", "usage", "dead_codes", "support_size"):
            assert dist_metrics[key] == pytest.approx(metrics[key], rel=1e-9), (name, key)


def test_revived_codes_agree_across_ranks(ranks):
    assert torch.equal(ranks[0]["revival"], ranks[1]["revival"])
    assert ranks[0]["revival"].mean() > 2  # the codes moved to the data (around 5)


def test_init_from_data_agrees_across_ranks(ranks):
    for key, value in ranks[0]["init"].items():
        assert torch.equal(value, ranks[1]["init"][key]), key


def test_ddp_training_keeps_codebooks_identical(ranks):
    assert torch.equal(ranks[0]["ddp"], ranks[1]["ddp"])
    assert torch.isfinite(ranks[0]["ddp"]).all()
