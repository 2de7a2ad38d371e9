"""The priors reproduce the original's conditioning, losses, logits and cached sampling.

Each fixture holds a small prior (width 64, n_ctx 256) with seeded weights on top of the
``vqvae_3level`` VQ-VAE, its forward outputs and several runs of ``SimplePrior.sample``.
"""
import pytest
import torch

from conftest import IDS_DIR, load_fixture
from jukebox.data.labels import EmptyLabeller, Labeller
from jukebox.hparams import Hyperparams
from jukebox.inference import sampler
from jukebox.make_models import make_labeller, make_prior, make_vqvae
from jukebox.prior.conditioners import RangeEmbedding

pytestmark = pytest.mark.usefixtures("one_thread")

LOGITS_ATOL = 1e-4
LOSS_RTOL = 1e-5
LATENT_ATOL = 1e-5
FIXTURES = ["prior_top_unconditional", "prior_top_labelled", "prior_sep_enc_dec_lyrics",
            "prior_single_enc_dec_lyrics", "upsampler_level_1", "upsampler_level_0"]

_VQVAE_FIXTURES = {}


def _build(fixture):
    name = fixture["vqvae_fixture"]
    if name not in _VQVAE_FIXTURES:
        _VQVAE_FIXTURES[name] = load_fixture(name)
    vq_fixture = _VQVAE_FIXTURES[name]
    vq_hps = Hyperparams(vq_fixture["hps"])
    vq_hps.sample_length = fixture["derived"]["sample_length"]
    vqvae = make_vqvae(vq_hps, "cpu")
    vqvae.load_state_dict(vq_fixture["state_dict"])
    prior = make_prior(Hyperparams(fixture["hps"]), vqvae, "cpu")
    prior.load_state_dict(fixture["state_dict"])
    return prior


@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    fixture = load_fixture(request.param)
    return fixture, _build(fixture)


def _close(actual, expected, atol):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _check_loss(loss, metrics, out):
    torch.testing.assert_close(loss, out["loss"], rtol=LOSS_RTOL, atol=0)
    for key in ("bpd", "prime_loss", "gen_loss"):
        torch.testing.assert_close(metrics[key], out["metrics"][key], rtol=LOSS_RTOL, atol=1e-7)
    _close(metrics["preds"], out["logits"], LOGITS_ATOL)


def _conds(prior, z_conds, y):
    """What SimplePrior.sample feeds the inner model: (x_cond, y_cond, encoder_kv) for a batch."""
    x_cond, y_cond, prime = prior.get_cond(z_conds, y)
    if prior.single_enc_dec:
        return x_cond, y_cond, None, prime
    return x_cond, y_cond, prior.get_encoder_kv(prime), prime


def test_structure(case):
    fixture, prior = case
    derived = fixture["derived"]
    assert list(prior.state_dict()) == list(fixture["state_dict"])
    assert prior.n_ctx == derived["n_ctx"]
    assert prior.raw_to_tokens == derived["raw_to_tokens"]
    assert prior.sample_length == derived["sample_length"]
    assert [list(s) for s in prior.z_shapes] == derived["z_shapes"]
    assert prior.cond_downsample == derived["cond_downsample"]
    assert prior.total_loss_dims == derived["total_loss_dims"]
    assert prior.prime_loss_dims == derived["prime_loss_dims"]
    assert prior.gen_loss_dims == derived["gen_loss_dims"]
    assert prior.prior.input_dims == derived["transformer_n_ctx"]
    assert prior.prior.bins == derived["bins"]
    assert [m.attn.attn_func for m in prior.prior.transformer._attn_mods] == derived["transformer_attn_funcs"]
    if "prime_attn_funcs" in derived:
        assert [m.attn.attn_func for m in prior.prime_prior.transformer._attn_mods] == derived["prime_attn_funcs"]
    if "prior_bins" in derived:
        assert prior.prior_bins == derived["prior_bins"]
        assert prior.prior_bins_shift == derived["prior_bins_shift"]
    assert not prior.training


def test_conditioning(case):
    fixture, prior = case
    out, y = fixture["outputs"], fixture["inputs"]["y"]
    with torch.no_grad():
        x_cond, y_cond, encoder_kv, _ = _conds(prior, out["z_conds"], y)
    for name, got in (("x_cond", x_cond), ("y_cond", y_cond)):
        if out[name] is None:
            assert got is None
        else:
            _close(got, out[name], LATENT_ATOL)
    if "encoder_kv" in out:
        _close(encoder_kv, out["encoder_kv"], LATENT_ATOL)
    else:
        assert encoder_kv is None
    if "timing_bins" in out:
        bins = prior.get_timing_bins(y)
        assert bins.keys() == out["timing_bins"].keys()
        for key, expected in out["timing_bins"].items():
            assert torch.equal(bins[key], expected), key


def test_z_forward(case):
    fixture, prior = case
    out = fixture["outputs"]
    with torch.no_grad():
        loss, metrics = prior.z_forward(out["z"], out["z_conds"], fixture["inputs"]["y"], get_preds=True)
    _check_loss(loss, metrics, out)


def test_forward_from_audio(case):
    fixture, prior = case
    out = fixture["outputs"]
    x = fixture["inputs"]["x"]
    z, *z_conds = prior.encode(x, bs_chunks=x.shape[0])
    assert torch.equal(z, out["z"])
    assert len(z_conds) == len(out["z_conds"])
    assert all(torch.equal(a, b) for a, b in zip(z_conds, out["z_conds"]))
    with torch.no_grad():
        x_out, loss, metrics = prior(x, fixture["inputs"]["y"], get_preds=True)
    assert x_out is None
    _check_loss(loss, metrics, out)


def _run_inputs(fixture, run):
    n = run["spec"]["n_samples"]
    y = fixture["inputs"]["y"]
    z_conds = [z[:n] for z in fixture["outputs"]["z_conds"]]
    return n, z_conds, None if y is None else y[:n]


def test_cached_step_logits(case):
    """Every stored run's tokens, fed through the KV-cached path (same priming chunks), give its step logits."""
    fixture, prior = case
    for run in fixture["sampling"]:
        n, z_conds, y = _run_inputs(fixture, run)
        p0 = run["first_step_position"]
        with torch.no_grad():
            x_cond, y_cond, encoder_kv, _ = _conds(prior, z_conds, y)
            if prior.single_enc_dec:
                x_cond = prior.prior_preprocess([y[:, -prior.n_tokens:]], [None, x_cond])[1]
            logits = prior.prior.cached_logits(run["raw_tokens"], x_cond, y_cond, encoder_kv, n_prime=p0,
                                               chunk_size=run["spec"].get("chunk_size"))
        _close(logits[:, p0:], run["step_logits"], LOGITS_ATOL)


def test_cache_matches_full_forward(case, monkeypatch):
    """Priming in uneven chunks then stepping gives the logits of one uncached forward pass."""
    monkeypatch.setattr(sampler, "CPU_CHUNK_ROWS", 1)  # chunks of 7 as asked, not the CPU's larger ones
    fixture, prior = case
    out = fixture["outputs"]
    y = fixture["inputs"]["y"]
    with torch.no_grad():
        x_cond, y_cond, encoder_kv, prime = _conds(prior, out["z_conds"], y)
        z = out["z"][:, :70]
        if prior.single_enc_dec:
            z, x_cond = prior.prior_preprocess([prime, z], [None, x_cond])
        logits = prior.prior.cached_logits(z, x_cond, y_cond, encoder_kv, n_prime=z.shape[1] - 20, chunk_size=7)
    _close(logits, out["logits"][:, :z.shape[1]], LOGITS_ATOL)


def test_seeded_sampling_reproduces_tokens(case):
    """With the stored seed, sample() draws the stored tokens (one categorical draw per step, as the original)."""
    fixture, prior = case
    for run in fixture["sampling"]:
        spec = run["spec"]
        n, z_conds, y = _run_inputs(fixture, run)
        torch.manual_seed(spec["seed"])
        tokens = prior.sample(n, z=run.get("prefix"), z_conds=z_conds, y=y, temp=spec["temp"],
                              top_k=spec.get("top_k", 0), top_p=spec.get("top_p", 0.0),
                              chunk_size=spec.get("chunk_size"), sample_tokens=spec["sample_tokens"])
        assert tokens.dtype == torch.int64
        assert torch.equal(tokens, run["tokens"]), spec


def test_sampling_returns_prefix_and_step_logits(case):
    fixture, prior = case
    run = fixture["sampling"][-1]
    n, z_conds, y = _run_inputs(fixture, run)
    with torch.no_grad():
        x_cond, y_cond, encoder_kv, prime = _conds(prior, z_conds, y)
        prefix = run["raw_tokens"][:, :run["first_step_position"]]
        if prior.single_enc_dec:
            x_cond = prior.prior_preprocess([prime], [None, x_cond])[1]
        torch.manual_seed(0)
        x, preds = prior.prior.primed_sample(n, prefix, x_cond, y_cond, encoder_kv, get_preds=True,
                                             chunk_size=5, sample_tokens=prefix.shape[1] + 6)
    assert x.shape == (n, prefix.shape[1] + 6)
    assert torch.equal(x[:, :prefix.shape[1]], prefix)
    assert preds.shape == (n, prefix.shape[1] + 6, prior.prior.bins)
    # The logits of the prefix positions come from the chunked priming passes.
    _close(preds[:, prefix.shape[1]:prefix.shape[1] + 1], run["step_logits"][:, :1], LOGITS_ATOL)


def test_labeller_is_built_outside_the_prior(case, tmp_path):
    _, prior = case
    if not prior.y_cond:
        assert isinstance(prior.labeller, EmptyLabeller) and isinstance(make_labeller(prior), EmptyLabeller)
        assert prior.get_y(None, 0) is None
        return
    assert prior.labeller is None  # building the prior read no id tables
    with pytest.raises(ValueError, match="make_labeller"):
        prior.get_y(dict(y=torch.zeros(1, 4 + prior.y_emb.max_bow_genre_size + prior.n_tokens, dtype=torch.long),
                         info=[{}]), 0)
    with pytest.raises(FileNotFoundError):
        make_labeller(prior, tmp_path)
    labeller = make_labeller(prior, IDS_DIR)
    assert isinstance(labeller, Labeller)
    assert labeller.label_shape == (4 + prior.y_emb.max_bow_genre_size + prior.n_tokens,)


def test_get_y_and_z_conds(case):
    """get_y rebuilds the fixture's y from its ids and full lyrics; get_z_conds cuts the level above."""
    fixture, prior = case
    y, out = fixture["inputs"]["y"], fixture["outputs"]
    if y is None:
        assert prior.get_y(None, 0) is None
    else:
        prior.labeller = make_labeller(prior, IDS_DIR)
        try:
            labels = dict(y=y.clone(), info=fixture["inputs"]["y_info"])
            rebuilt, indices = prior.get_y(labels, 0, get_indices=True)
            assert torch.equal(rebuilt, y)
            if prior.n_tokens:
                assert indices == [info["window_indices"] for info in labels["info"]]
            shifted = prior.get_y(labels, 5)
            assert torch.equal(shifted[:, 1], y[:, 1] + 5 * prior.raw_to_tokens)
            assert torch.equal(labels["y"], y)  # labels are not modified
        finally:
            prior.labeller = None
    if prior.x_cond:
        zs = [None] * prior.level + [out["z"], *out["z_conds"]]  # indexed by level, as in sampling
        assert torch.equal(prior.get_z_conds(zs, 0, prior.n_ctx)[0], out["z_conds"][0])
        with pytest.raises(ValueError, match="aligned"):
            prior.get_z_conds(zs, 1, prior.n_ctx + 1)
    else:
        assert prior.get_z_conds([out["z"]], 0, prior.n_ctx) is None


def test_attention_weights_recording(case):
    fixture, prior = case
    out = fixture["outputs"]
    last = len(prior.prior.transformer._attn_mods) - 1
    with torch.no_grad():
        ws = prior.z_forward(out["z"], out["z_conds"], fixture["inputs"]["y"], get_attn_weights={last})
    assert len(ws) == 1
    w = ws[0]
    heads = prior.prior.transformer.n_head
    if prior.single_enc_dec:  # prime attention (used for lyric alignment): music queries over lyric keys
        assert w.shape == (2, heads, prior.n_ctx, prior.n_tokens)
        assert torch.all(w >= 0) and torch.all(w.sum(-1) <= 1 + 1e-5)
    else:
        assert isinstance(w, torch.Tensor) and w.shape[1] == heads
    assert not any(m.attn.record_attn for m in prior.prior.transformer._attn_mods)


def test_bad_inputs_raise_clear_errors(case):
    fixture, prior = case
    out, y = fixture["outputs"], fixture["inputs"]["y"]
    with pytest.raises(ValueError, match="lie in"):
        prior.check_inputs(out["z"] + 10_000, out["z_conds"], y)
    with pytest.raises(ValueError, match="lie in"):
        prior.sample(2, z=out["z"][:, :4] + 10_000, z_conds=out["z_conds"], y=y)
    prior.check_inputs(out["z"], out["z_conds"], y)  # the fixture's own inputs are fine
    if y is not None:
        unknown_artist = y.clone()
        unknown_artist[:, 3] = 10 ** 6
        with pytest.raises(ValueError, match="label ids must lie in .*y_bins"):
            prior.check_inputs(y=unknown_artist)
    with pytest.raises(ValueError, match="n_samples"):
        prior.sample(3, z=out["z"][:, :4], z_conds=out["z_conds"], y=y)
    prior.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            prior.sample(2, z=out["z"][:, :4], z_conds=out["z_conds"], y=y, sample_tokens=6)
    finally:
        prior.eval()


def test_range_embedding_bins():
    for case in load_fixture("utils")["range_embedding_bins"]:
        args = case["args"]
        emb = RangeEmbedding(args["n_time"], args["bins"], tuple(args["range"]), out_width=4, init_scale=1.0,
                             clamp=args["clamp"])
        start = torch.tensor(args["pos_start"]).view(-1, 1)
        end = None if args["pos_end"] is None else torch.tensor(args["pos_end"]).view(-1, 1)
        bins = emb.get_bins(start, end)
        assert bins.dtype == torch.int64
        assert torch.equal(bins, case["bins"]), args
        assert emb(start, end).shape == (*case["bins"].shape, 4)


def test_range_embedding_rejects_out_of_range():
    emb = RangeEmbedding(4, 8, (0.0, 10.0), out_width=2, init_scale=1.0)
    with pytest.raises(ValueError, match="lie in"):
        emb.check(torch.tensor([[10.0]]), torch.tensor([[10.0]]))
    with pytest.raises(ValueError, match="pos_end"):
        emb(torch.tensor([[1.0]]))


def test_fp16_params_and_fp16_sampling_on_cpu():
    """fp16_params stores only the transformer's linear weights in float16; fp16 on CPU falls back to float32."""
    fixture = load_fixture("prior_top_unconditional")
    fixture = dict(fixture, hps=dict(fixture["hps"], fp16_params=True))
    prior = _build(fixture)
    for name, tensor in prior.state_dict().items():
        assert tensor.dtype == (torch.float16 if name.endswith(".w") else torch.float32), name
    with pytest.warns(UserWarning, match="fp16"):
        tokens = prior.sample(2, fp16=True, sample_tokens=5)
    assert tokens.shape == (2, 5) and tokens.dtype == torch.int64
    with torch.no_grad(), pytest.warns(UserWarning, match="fp16"):
        loss, _ = prior.z_forward(fixture["outputs"]["z"], [], None, fp16=True)
    # Weights rounded to float16 move the loss only slightly.
    torch.testing.assert_close(loss, fixture["outputs"]["loss"], rtol=1e-2, atol=0)
