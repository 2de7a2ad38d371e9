"""Codebook training of the VQ bottleneck: init, EMA update, dead-code restart, metrics, and
identical codebooks on every data-parallel rank."""
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jukebox.vqvae.bottleneck import Bottleneck, BottleneckBlock, NoBottleneck


def _rows(x_nct):
    """(N, C, T) latents as the (N*T, C) rows the quantiser works on."""
    return x_nct.permute(0, 2, 1).reshape(-1, x_nct.shape[1])


def _is_row_of(vectors, rows):
    distance = torch.cdist(vectors, rows, compute_mode="donot_use_mm_for_euclid_dist")
    return (distance.min(dim=1).values == 0).all()


def test_first_training_batch_initialises_codebook_from_encoder_outputs():
    torch.manual_seed(0)
    block = BottleneckBlock(k_bins=16, emb_width=4, mu=0.99).train()
    x = torch.randn(2, 4, 20)  # 40 rows >= 16 codes: picked without noise
    block.init_k(_rows(x))
    assert block.init and _is_row_of(block.k, _rows(x))
    assert len(torch.unique(block.k, dim=0)) == 16  # picked without replacement
    torch.testing.assert_close(block.k_sum, block.k)
    torch.testing.assert_close(block.k_elem, torch.ones(16))

    # Fewer rows than codes: rows are tiled and jittered by N(0, (0.01/sqrt(w))^2).
    small = BottleneckBlock(k_bins=16, emb_width=4, mu=0.99)
    rows = torch.randn(5, 4)
    small.init_k(rows)
    nearest = torch.cdist(small.k, rows).min(dim=1).values
    assert (nearest > 0).all() and (nearest < 0.01 / math.sqrt(4) * 8).all()

    # forward() in training initialises on its first call only.
    fresh = BottleneckBlock(k_bins=16, emb_width=4, mu=0.99)
    assert not fresh.init and (fresh.k == 0).all()
    fresh.eval()
    fresh(x, update_k=False)  # no training step, no initialisation
    assert not fresh.init
    fresh.train()
    seeded = {}

    def spy(rows):
        BottleneckBlock.init_k(fresh, rows)
        seeded["k"] = fresh.k.clone()

    fresh.init_k = spy
    fresh(x, update_k=True)
    assert fresh.init and _is_row_of(seeded["k"], _rows(x))
    # Each seed is its own nearest code, so every code was used once or more in that first step.
    counts = torch.bincount(torch.cdist(_rows(x), seeded["k"]).argmin(dim=1), minlength=16).float()
    assert (counts >= 1).all()
    torch.testing.assert_close(fresh.k_elem, 0.99 + 0.01 * counts)
    fresh.init_k = lambda rows: pytest.fail("the codebook was initialised twice")
    fresh(x, update_k=True)


def test_ema_update_follows_formula():
    torch.manual_seed(1)
    mu = 0.9
    block = BottleneckBlock(k_bins=8, emb_width=3, mu=mu)
    block.k.copy_(torch.randn(8, 3))
    block.restore_k(num_tokens=800, threshold=1.0)  # every code starts with usage 100
    k_sum, k_elem = block.k_sum.clone(), block.k_elem.clone()
    x = torch.randn(2, 3, 30)
    rows = _rows(x)
    codes = torch.cdist(rows, block.k).argmin(dim=1)
    counts = torch.bincount(codes, minlength=8).float()
    sums = torch.zeros(8, 3).index_add_(0, codes, rows)

    z, _, _, metrics = block(x, update_k=True)
    assert torch.equal(z.reshape(-1), codes)
    expected_sum = mu * k_sum + (1 - mu) * sums
    expected_elem = mu * k_elem + (1 - mu) * counts
    torch.testing.assert_close(block.k_sum, expected_sum)
    torch.testing.assert_close(block.k_elem, expected_elem)
    torch.testing.assert_close(block.k, expected_sum / expected_elem[:, None])
    assert metrics["usage"] == 8  # no code fell below the threshold


def test_dead_codes_are_restarted_from_encoder_outputs():
    torch.manual_seed(2)
    block = BottleneckBlock(k_bins=4, emb_width=2, mu=0.99)
    # Codes 2 and 3 are far from every input, so they receive no vectors.
    block.k.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [100.0, 100.0], [-100.0, 100.0]]))
    block.restore_k(num_tokens=4, threshold=1.0)  # usage 1 each: one unused step drops it to 0.99
    old_k = block.k.clone()
    x = torch.tensor([[[0.9, 1.1, -0.9, 1.2, -1.1, 0.8], [0.1, -0.1, 0.0, 0.2, 0.1, -0.2]]])  # (1, 2, 6)
    rows = _rows(x)
    _, _, _, metrics = block(x, update_k=True)
    used, dead = [0, 1], [2, 3]
    assert _is_row_of(block.k[dead], rows)  # 6 rows >= 4 codes: restarted to exact encoder vectors
    assert (block.k_elem[dead] < 1.0).all() and (block.k_elem[used] >= 1.0).all()
    torch.testing.assert_close(block.k[used], block.k_sum[used] / block.k_elem[used, None])
    assert metrics["usage"] == 2 and metrics["used_curr"] == 2
    torch.testing.assert_close(metrics["dk"], torch.norm(block.k - old_k) / math.sqrt(old_k.numel()))


def test_metrics_on_hand_made_example():
    block = BottleneckBlock(k_bins=4, emb_width=2, mu=0.5)
    block.k.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    block.restore_k(num_tokens=40, threshold=1.0)  # usage 10 each: nobody is restarted
    # Three vectors near code 0, one near code 1: counts (3, 1, 0, 0).
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [10.0, 2.0]]).t().reshape(1, 2, 4)
    z, x_q, commit_loss, metrics = block(x, update_k=True)
    assert z.tolist() == [[0, 0, 0, 1]]
    p = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(metrics["entropy"], -(p * torch.log(p + 1e-8)).sum())
    assert metrics["used_curr"] == 2 and metrics["usage"] == 4
    # New codes: (0.5 * 10 * k + 0.5 * sum) / (0.5 * 10 + 0.5 * count).
    expected_k = torch.tensor([[0.5 / 6.5, 0.0], [(50 + 5) / 5.5, 1 / 5.5], [0.0, 10.0], [10.0, 10.0]])
    torch.testing.assert_close(block.k, expected_k)
    old_k = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    torch.testing.assert_close(metrics["dk"], torch.norm(expected_k - old_k) / math.sqrt(8))
    # Commit loss and fit use the codebook before the update; pn is the spread of the inputs.
    rows = _rows(x)
    assigned = old_k[[0, 0, 0, 1]]
    torch.testing.assert_close(commit_loss, ((assigned - rows) ** 2).sum() / rows.numel())
    torch.testing.assert_close(metrics["fit"], ((assigned - rows) ** 2).sum(dim=1).mean())
    torch.testing.assert_close(metrics["pn"], torch.norm(rows - rows.mean()) / math.sqrt(rows.numel()))
    torch.testing.assert_close(x_q, assigned.t().reshape(1, 2, 4))


def test_commit_loss_and_straight_through_gradient():
    torch.manual_seed(3)
    block = BottleneckBlock(k_bins=8, emb_width=4, mu=0.99)
    block.k.copy_(torch.randn(8, 4))
    x = torch.randn(2, 4, 5, requires_grad=True)
    z, x_q, commit_loss, metrics = block(x, update_k=False)
    assert set(metrics) == {"fit", "pn"}
    expected_q = block.k[z].permute(0, 2, 1)
    torch.testing.assert_close(x_q, expected_q)
    torch.testing.assert_close(commit_loss, ((expected_q - x) ** 2).sum() / x.numel())
    (x_q * torch.arange(40.0).reshape(2, 4, 5)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(40.0).reshape(2, 4, 5))  # identity through the quantiser
    x.grad = None
    commit_loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x - expected_q).detach() / x.numel())


def test_eval_mode_leaves_codebook_alone():
    torch.manual_seed(4)
    bottleneck = Bottleneck(l_bins=8, emb_width=4, mu=0.99, levels=2)
    for block in bottleneck.level_blocks:
        block.k.copy_(torch.randn(8, 4))
    before = [block.k.clone() for block in bottleneck.level_blocks]
    xs = [torch.randn(2, 4, 6, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)]
    bottleneck.eval()
    zs, xs_q, commit_losses, metrics = bottleneck(xs)
    assert metrics == [] and not any(block.init for block in bottleneck.level_blocks)
    assert all(torch.equal(block.k, k) for block, k in zip(bottleneck.level_blocks, before))
    assert not any(x_q.requires_grad for x_q in xs_q)
    assert [z.shape for z in zs] == [(2, 6), (2, 3)] and len(commit_losses) == 2
    bottleneck.train()
    _, xs_q, _, metrics = bottleneck(xs)
    assert len(metrics) == 2 and {"usage", "entropy", "used_curr", "dk", "fit", "pn"} == set(metrics[0])
    assert all(x_q.requires_grad for x_q in xs_q)


def test_no_bottleneck_passes_latents_through():
    xs = [torch.randn(2, 4, 6), torch.randn(2, 4, 3)]
    none = NoBottleneck(levels=2)
    zs, xs_q, commit_losses, metrics = none(xs)
    assert all(a is b for a, b in zip(zs, xs)) and all(a is b for a, b in zip(xs_q, xs))
    assert all(c == 0 for c in commit_losses) and set(metrics[0]) == {"entropy", "usage", "used_curr", "pn", "dk"}
    assert none.encode(xs) == xs and none.decode(xs) == xs


def test_quantisation_is_float32_under_autocast():
    torch.manual_seed(5)
    block = BottleneckBlock(k_bins=256, emb_width=64, mu=0.99)
    block.k.copy_(torch.randn(256, 64))
    x = torch.randn(4, 64, 100)
    codes = block.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(block.encode(x), codes)
        z, x_q, _, _ = block(x, update_k=False)
    assert torch.equal(z, codes) and x_q.dtype == torch.float32


def test_bad_latent_shape_is_rejected():
    block = BottleneckBlock(k_bins=8, emb_width=4, mu=0.99)
    with pytest.raises(ValueError, match=r"\(N, 4, T\)"):
        block.encode(torch.zeros(2, 3, 5))


# --- data-parallel ---------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_codebooks(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank)  # different data and different local random draws per rank
        bottleneck = Bottleneck(l_bins=32, emb_width=4, mu=0.9, levels=2).train()
        for _ in range(6):
            # Few rows at level 1 (tiling with noise) and some dead codes (random restarts).
            xs = [torch.randn(2, 4, 24) * (rank + 1), torch.randn(2, 4, 6) + rank]
            bottleneck(xs)
        # No restarts and a known start: the EMA must equal one process on the union of the batches.
        ema = BottleneckBlock(k_bins=8, emb_width=4, mu=0.9)
        ema.k.copy_(torch.arange(32.0).reshape(8, 4) / 8)
        ema.restore_k(num_tokens=8000)
        batches = [torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(7 + 100 * r)) for r in range(2)]
        ema(batches[rank])
        torch.save(dict(codebooks=[b.k for b in bottleneck.level_blocks],
                        k_sum=[b.k_sum for b in bottleneck.level_blocks],
                        k_elem=[b.k_elem for b in bottleneck.level_blocks],
                        ema_k=ema.k, batches=batches), f"{out_dir}/rank_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_codebooks_identical_across_ranks(tmp_path):
    mp.spawn(_train_codebooks, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in range(2)]
    for key in ("codebooks", "k_sum", "k_elem"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), key
    assert not torch.equal(ranks[0]["codebooks"][0], torch.zeros(32, 4))
    assert torch.equal(ranks[0]["ema_k"], ranks[1]["ema_k"])

    single = BottleneckBlock(k_bins=8, emb_width=4, mu=0.9)
    single.k.copy_(torch.arange(32.0).reshape(8, 4) / 8)
    single.restore_k(num_tokens=8000)
    single(torch.cat(ranks[0]["batches"], dim=0))
    torch.testing.assert_close(ranks[0]["ema_k"], single.k)
