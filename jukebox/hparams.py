"""Hyperparameter registry with the original Jukebox names and values.

``setup_hparams("set_a,set_b", overrides)`` starts from every ``DEFAULTS`` group, applies the
named ``HPARAMS_REGISTRY`` sets left to right and then ``overrides``. A key that is in no
``DEFAULTS`` group is an error that names the key and the closest known keys.

Keys in ``COMPAT_ONLY_KEYS`` are accepted so the original's registry sets and command lines load
unchanged, but nothing here reads them: setting one to a value other than its default warns
(``CompatOnlyHparamWarning``), unless a set shipped in this file gives it that value.
"""
from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Hyperparams", "HPARAMS_REGISTRY", "DEFAULTS", "COMPAT_ONLY_KEYS", "CompatOnlyHparamWarning",
           "UnknownHparamError", "setup_hparams", "REMOTE_PREFIX"]


class Hyperparams(dict):
    """A dict whose keys can also be read and written as attributes (``hps.n_ctx``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no hyperparameter named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class UnknownHparamError(KeyError):
    """Raised for a hyperparameter or registry set name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CompatOnlyHparamWarning(UserWarning):
    """A ``COMPAT_ONLY_KEYS`` key was set away from its default, which has no effect here."""


HPARAMS_REGISTRY: dict[str, Hyperparams] = {}
DEFAULTS: dict[str, Hyperparams] = {}

# The released weights were served from this prefix; jukebox.utils.remote maps it to a live mirror.
REMOTE_PREFIX = "https://openaipublic.azureedge.net/"


def _closest(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return ", ".join(matches) if matches else "(no close match)"


def _default_keys() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for group in DEFAULTS.values():
        merged.update(group)
    return merged


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _compat_keys_to_warn(name: str | None, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, bool]:
    """Each compat-only key that ``values`` sets (registry set ``name``; the overrides when None), with whether to
    warn: its value is not the default, nor the value that the set of that name shipped here gives it."""
    shipped = _SHIPPED_COMPAT_VALUES.get(name, {}) if name is not None else {}
    flags = {}
    for key in (k for k in values if k in COMPAT_ONLY_KEYS):
        value = _plain(values[key])
        flags[key] = value != _plain(defaults[key]) and not (key in shipped and value == shipped[key])
    return flags


def setup_hparams(hparam_set_names: str | Iterable[str], overrides: Mapping[str, Any] | None = None) -> Hyperparams:
    """Merge defaults, registry sets and overrides into one ``Hyperparams``.

    ``hparam_set_names`` is a comma-separated string (``"small_vqvae,small_prior"``) or a
    sequence of names; empty names are ignored. A ``COMPAT_ONLY_KEYS`` key left at a value other
    than its default (by the overrides or by a set not shipped here) warns once, with the reason.
    """
    overrides = dict(overrides or {})
    if isinstance(hparam_set_names, str):
        names = [n.strip() for n in hparam_set_names.split(",")]
    else:
        names = [str(n).strip() for n in hparam_set_names]
    names = [n for n in names if n]

    defaults = _default_keys()
    hps = Hyperparams(defaults)
    sets: list[tuple[str | None, Mapping[str, Any]]] = []
    for name in names:
        if name not in HPARAMS_REGISTRY:
            raise UnknownHparamError(
                f"unknown hparams set {name!r}; closest registered sets: {_closest(name, HPARAMS_REGISTRY)}. "
                "Register your own with HPARAMS_REGISTRY[name] = Hyperparams(...) in jukebox/hparams.py."
            )
        sets.append((name, HPARAMS_REGISTRY[name]))
    sets.append((None, overrides))
    without_effect: dict[str, str] = {}  # key -> origin of the value it ends with
    for name, values in sets:
        origin = "overrides" if name is None else f"hparams set {name!r}"
        for key in values:
            if key not in hps:
                raise UnknownHparamError(
                    f"unknown hyperparameter {key!r} (from {origin}); closest known keys: {_closest(key, hps)}"
                )
        for key, warn in _compat_keys_to_warn(name, values, defaults).items():
            if warn:
                without_effect[key] = origin
            else:
                without_effect.pop(key, None)
        hps.update(values)
    for key, origin in without_effect.items():
        warnings.warn(f"hyperparameter {key}={hps[key]!r} (from {origin}) has no effect here: {COMPAT_ONLY_KEYS[key]}",
                      CompatOnlyHparamWarning, stacklevel=2)
    return hps


def _register(name: str, *parts: Mapping[str, Any], **values: Any) -> Hyperparams:
    """Register ``name`` as ``values`` updated with ``parts`` (later parts win, as in the original)."""
    hps = Hyperparams(values)
    for part in parts:
        hps.update(part)
    HPARAMS_REGISTRY[name] = hps
    return hps


# ---------------------------------------------------------------------------------------------
# Released models
# ---------------------------------------------------------------------------------------------
_register("teeny")
_register("easy", sr=22050)

vqvae = _register(
    "vqvae",
    levels=3, downs_t=(3, 2, 2), strides_t=(2, 2, 2), emb_width=64, l_bins=2048, l_mu=0.99,
    commit=0.02, spectral=0.0, multispectral=1.0, hvqvae_multipliers=(2, 1, 1), loss_fn="lmix",
    lmix_l2=1.0, lmix_linf=0.02, width=32, depth=4, m_conv=1.0, dilation_growth_rate=3,
    restore_vqvae=REMOTE_PREFIX + "jukebox/models/5b/vqvae.pth.tar",
)

labels = Hyperparams(y_bins=(120, 4111), t_bins=128, max_bow_genre_size=5, n_vocab=80)
labels_v3 = Hyperparams(y_bins=(604, 7898), t_bins=64, max_bow_genre_size=1, n_vocab=79)

upsamplers = Hyperparams(
    n_ctx=8192, prior_width=1920, prior_depth=72, heads=1, attn_order=2, blocks=128, init_scale=0.4,
    c_res=1, cond_width=1024, cond_depth=16, cond_dilation_growth_rate=3, cond_dilation_cycle=8,
    cond_c_res=1, use_tokens=False, prime_loss_fraction=0.0, fp16_params=False,
)
upsamplers.update(labels)

_register("upsampler_level_0", upsamplers,
          level=0, restore_prior=REMOTE_PREFIX + "jukebox/models/5b/prior_level_0.pth.tar")
_register("upsampler_level_1", upsamplers,
          level=1, cond_res_scale=True, restore_prior=REMOTE_PREFIX + "jukebox/models/5b/prior_level_1.pth.tar")

_register(
    "prior_5b", labels,
    level=2, n_ctx=8192, prior_width=4800, prior_depth=72, heads=8, attn_order=2, blocks=128,
    init_scale=0.1, c_res=1, beta2=0.925, min_duration=60.0, max_duration=600.0, use_tokens=False,
    n_tokens=0, prime_loss_fraction=0.0, merged_decoder=True,
    restore_prior=REMOTE_PREFIX + "jukebox/models/5b/prior_level_2.pth.tar", fp16_params=True,
)
_register(
    "prior_5b_lyrics", labels,
    level=2, n_ctx=8192, prior_width=4800, prior_depth=79, heads=8, attn_order=10, blocks=128,
    init_scale=0.1, c_res=1, prime_width=1280, prime_depth=18, prime_heads=4, prime_attn_order=2,
    prime_blocks=32, prime_init_scale=0.7, prime_c_res=1, min_duration=23.8, max_duration=600.0,
    use_tokens=True, n_tokens=512, prime_loss_fraction=0.4, merged_decoder=True,
    restore_prior=REMOTE_PREFIX + "jukebox/models/5b_lyrics/prior_level_2.pth.tar", fp16_params=True,
    alignment_layer=68, alignment_head=2,
)
_register(
    "prior_1b_lyrics", labels_v3,
    level=2, n_ctx=6144, prior_width=2048, prior_depth=72, heads=2, attn_order=12, blocks=64,
    init_scale=0.2, c_res=1, labels_v3=True, min_duration=17.84, max_duration=600.0, use_tokens=True,
    n_tokens=384, prime_loss_fraction=0.4, single_enc_dec=True,
    restore_prior=REMOTE_PREFIX + "jukebox/models/1b_lyrics/prior_level_2.pth.tar", fp16_params=False,
    alignment_layer=63, alignment_head=0,
)

# ---------------------------------------------------------------------------------------------
# Small models of the original README (sized for 16 GB V100s; scale down on the command line)
# ---------------------------------------------------------------------------------------------
_register(
    "small_vqvae",
    sr=22050, levels=2, downs_t=(5, 3), strides_t=(2, 2), emb_width=64, l_bins=1024, l_mu=0.99,
    commit=0.02, spectral=0.0, multispectral=1.0, loss_fn="l2", width=32, depth=4, m_conv=1.0,
    dilation_growth_rate=3,
)
small_prior = _register(
    "small_prior",
    n_ctx=8192, prior_width=1024, prior_depth=48, heads=1, c_res=1, attn_order=2, blocks=64, init_scale=0.7,
)
_register(
    "small_labelled_prior", small_prior,
    labels=True, labels_v3=True, y_bins=(10, 100), max_bow_genre_size=1, min_duration=60.0,
    max_duration=600.0, t_bins=64,
)
_register(
    "small_single_enc_dec_prior",
    n_ctx=6144, prior_width=1024, prior_depth=48, heads=2, attn_order=12, blocks=64, init_scale=0.7,
    c_res=1, prime_loss_fraction=0.4, single_enc_dec=True, labels=True, labels_v3=True,
    y_bins=(10, 100), max_bow_genre_size=1, min_duration=60.0, max_duration=600.0, t_bins=64,
    use_tokens=True, n_tokens=384, n_vocab=79,
)
_register(
    "small_sep_enc_dec_prior",
    n_ctx=6144, prior_width=1024, prior_depth=50, heads=2, attn_order=8, blocks=64, init_scale=0.7,
    c_res=1, prime_loss_fraction=0.4, labels=True, labels_v3=True, y_bins=(10, 100),
    max_bow_genre_size=1, min_duration=60.0, max_duration=600.0, t_bins=64, use_tokens=True,
    n_tokens=384, n_vocab=79, prime_width=128, prime_depth=6, prime_heads=2, prime_attn_order=2,
    prime_blocks=32, prime_init_scale=0.7, prime_c_res=1,
)
_register(
    "small_upsampler",
    n_ctx=8192, prior_width=1024, prior_depth=48, heads=1, c_res=1, attn_order=2, blocks=64,
    init_scale=0.7, cond_width=512, cond_depth=16, cond_dilation_growth_rate=3, cond_dilation_cycle=8,
    cond_c_res=1,
)
_register("all_fp16", fp16=True, fp16_params=True, fp16_opt=True, fp16_scale_window=250)
_register("cpu_ema", ema=True, cpu_ema=True, cpu_ema_freq=100, ema_fused=False)

# ---------------------------------------------------------------------------------------------
# Defaults, grouped as in the original
# ---------------------------------------------------------------------------------------------
DEFAULTS["rcall"] = Hyperparams(rcall_command="<unknown_rcall_command>", git_commit="<unknown_git_commit>")
DEFAULTS["script"] = Hyperparams(
    name="", debug_mem=False, debug_eval_files=False, debug_speed=False, debug_iters=100,
    debug_batch=False, debug_grad_accum=False, debug_inputs=False, local_path="", local_logdir="logs",
    max_len=24, max_log=32, save=True, save_iters=20000, seed=0, prior=False, log_steps=100, func="",
)
DEFAULTS["data"] = Hyperparams(
    audio_files_dir="", finetune="", english_only=False, bs=1, bs_sample=1, nworkers=1,
    aug_shift=False, aug_blend=False, train_test_split=0.9, train_shrink_factor=1.0,
    test_shrink_factor=1.0, p_unk=0.1, min_duration=None, max_duration=None, n_tokens=0,
    n_vocab=0, use_tokens=False, curr_epoch=-1,
)
DEFAULTS["restore"] = Hyperparams(
    restore_vqvae="", restore_prior="", restore_prior_ddp=False, max_bow_genre_size=None,
    y_bins=0, level=0, cond_levels=None, t_bins=64, y_cond_as_bias=False, copy_input=False,
    merged_decoder=False, single_enc_dec=False, alignment_layer=None, alignment_head=None,
)
DEFAULTS["ema"] = Hyperparams(mu=None, ema=True, cpu_ema=False, cpu_ema_freq=100, ema_fused=True)
DEFAULTS["vqvae"] = Hyperparams(
    restore_decoder="", levels=2, downs_t=(1, 1), strides_t=(2, 2), hvqvae_multipliers=None,
    revival_threshold=1.0, emb_width=64, l_bins=512, l_mu=0.99, commit=1.0, spectral=0.0,
    multispectral=1.0, loss_fn="l2", linf_k=2048, lmix_l1=0.0, lmix_l2=0.0, lmix_linf=0.0,
    use_bottleneck=True,
)
DEFAULTS["vqvae_conv_block"] = Hyperparams(
    depth=3, width=128, m_conv=1.0, dilation_growth_rate=1, dilation_cycle=None,
    vqvae_reverse_decoder_dilation=True,
)
DEFAULTS["prior"] = Hyperparams(
    n_ctx=1024, prior_depth=3, prior_width=128, heads=1, attn_order=0, blocks=None, spread=None,
    attn_dropout=0.0, resid_dropout=0.0, emb_dropout=0.0, zero_out=False, res_scale=False,
    pos_init=False, init_scale=1.0, m_attn=0.25, m_mlp=1.0, c_res=0, c_attn=0, c_mlp=0,
)
DEFAULTS["cond_conv_block"] = Hyperparams(
    cond_depth=3, cond_width=128, cond_m_conv=1.0, cond_zero_out=False, cond_res_scale=False,
    cond_dilation_growth_rate=1, cond_dilation_cycle=None, cond_c_res=0,
)
DEFAULTS["sample"] = Hyperparams(primed_chunk_size=None, selected_artists="", temp_top=1.0, temp_rest=0.99,
                                 sample_length_in_seconds=24, total_sample_length_in_seconds=240)
DEFAULTS["prime"] = Hyperparams(
    prime_loss_fraction=0.1, restore_decoder="", prime_depth=3, prime_width=128, prime_heads=1,
    prime_attn_order=0, prime_blocks=None, prime_spread=None, prime_attn_dropout=0.0,
    prime_resid_dropout=0.0, prime_emb_dropout=0.0, prime_zero_out=False, prime_res_scale=False,
    prime_pos_init=False, prime_init_scale=1.0, prime_m_attn=0.25, prime_m_mlp=1.0, prime_c_res=0,
    prime_c_attn=0, prime_c_mlp=0, prime_rel_attn=False, prime_posemb_timescale=10000,
)
DEFAULTS["opt"] = Hyperparams(
    epochs=10000, lr=0.0003, clip=1.0, beta1=0.9, beta2=0.999, ignore_grad_norm=0, weight_decay=0.0,
    eps=1e-08, lr_warmup=100.0, lr_decay=10000000000.0, lr_gamma=1.0, lr_scale=1.0,
    lr_use_linear_decay=False, lr_start_linear_decay=0, lr_use_cosine_decay=False,
)
DEFAULTS["fp16"] = Hyperparams(fp16=False, fp16_params=False, fp16_loss_scale=None, fp16_scale_window=1000.0,
                               fp16_opt=False)
DEFAULTS["train_test_eval"] = Hyperparams(
    labels=True, labels_v3=False, dump=False, ema=True, ema_fused=True, cpu_ema=False, cpu_ema_freq=100,
    reset_best_loss=False, reset_step=False, reset_opt=False, reset_shd=False, train=False, test=False,
    sample=False, sampler="ancestral", codes_logdir="", date=None, labeller="top_genres", label_line=0,
    iters_before_update=1, grad_accum_iters=0, mu=None, piped=False, pipe_depth=8, break_train=1e10,
    break_test=1e10, exit_train=1e10,
)
DEFAULTS["audio"] = Hyperparams(
    n_fft=1024, hop_length=256, window_size=1024, sr=44100, channels=2, wav="", n_inps=1, n_hops=2,
    n_segment=1, n_total_segment=1, n_segment_each=1, prime_chunks=4, sample_length=0,
    sample_hop_length=30000, max_silence_pad_length=0, ignore_boundaries=False,
    use_nonrelative_specloss=True, multispec_loss_n_fft=(2048, 1024, 512),
    multispec_loss_hop_length=(240, 120, 50), multispec_loss_window_size=(1200, 600, 240),
)
DEFAULTS["distributed"] = Hyperparams(bucket=128)

# Keys of the original's registry that nothing here reads, each with why it has no effect. They stay
# accepted so that the original's sets and command lines load unchanged; setup_hparams warns when one is
# set away from its default. A key that code starts to read leaves this table (tests/test_hparams.py
# checks both ways).
_NOT_IN_ORIGINAL = "read nowhere in the original either"
_LAUNCHER = "bookkeeping of OpenAI's internal job launcher"
_DEBUG = f"a debugging switch {_NOT_IN_ORIGINAL}"
_SAMPLE_FLAGS = f"{_NOT_IN_ORIGINAL}; sampling takes jukebox/sample.py's own flags"
_FIXED_STFT = "the spectral loss and bandwidth use a fixed 2048/256/1536 STFT, as in the original"
_NO_PIPELINE = f"{_NOT_IN_ORIGINAL}; there is no pipeline parallelism"
_LYRICS_POSITIONS = f"{_NOT_IN_ORIGINAL}; the lyrics encoder uses learned positions"
COMPAT_ONLY_KEYS: dict[str, str] = {
    "rcall_command": _LAUNCHER,
    "git_commit": _LAUNCHER,
    "debug_mem": _DEBUG,
    "debug_eval_files": _DEBUG,
    "debug_speed": _DEBUG,
    "debug_iters": _DEBUG,
    "debug_batch": _DEBUG,
    "debug_grad_accum": _DEBUG,
    "debug_inputs": _DEBUG,
    "local_path": f"{_NOT_IN_ORIGINAL}; outputs go to local_logdir/name",
    "finetune": f"{_NOT_IN_ORIGINAL}; fine-tune by restoring a checkpoint (restore_prior, restore_vqvae)",
    "english_only": f"{_NOT_IN_ORIGINAL}; choose the files in audio_files_dir",
    "p_unk": f"{_NOT_IN_ORIGINAL}; labels are never swapped for 'unknown' at random",
    "restore_prior_ddp": "checkpoints load with or without DistributedDataParallel's 'module.' prefix",
    "cond_levels": f"{_NOT_IN_ORIGINAL}; a prior is conditioned on the level above it",
    "y_cond_as_bias": _NOT_IN_ORIGINAL,
    "ema_fused": "one EMA implementation serves ema and cpu_ema (fused was the original's apex kernel)",
    "restore_decoder": _NOT_IN_ORIGINAL,
    "primed_chunk_size": f"{_SAMPLE_FLAGS} (--chunk_size)",
    "selected_artists": f"{_SAMPLE_FLAGS} (--artist, --metas)",
    "temp_top": f"{_SAMPLE_FLAGS} (--temp, one per level)",
    "temp_rest": f"{_SAMPLE_FLAGS} (--temp, one per level)",
    "total_sample_length_in_seconds": "a flag of jukebox/sample.py, which takes it itself; training never uses it",
    "prime_rel_attn": _LYRICS_POSITIONS,
    "prime_posemb_timescale": _LYRICS_POSITIONS,
    "fp16_opt": "AdamW keeps float32 state (float16 state was the original's apex FP16FusedAdam)",
    "dump": _NOT_IN_ORIGINAL,
    "reset_best_loss": f"{_NOT_IN_ORIGINAL}; no best loss is tracked",
    "sample": f"{_NOT_IN_ORIGINAL}; sample with jukebox/sample.py",
    "sampler": f"{_SAMPLE_FLAGS} (--mode)",
    "codes_logdir": f"{_SAMPLE_FLAGS} (--codes_file)",
    "date": _NOT_IN_ORIGINAL,
    "labeller": f"{_NOT_IN_ORIGINAL}; labels_v3 and max_bow_genre_size choose the labeller",
    "label_line": _NOT_IN_ORIGINAL,
    "grad_accum_iters": f"{_NOT_IN_ORIGINAL}; gradient accumulation is not implemented",
    "piped": _NO_PIPELINE,
    "pipe_depth": _NO_PIPELINE,
    "func": _NOT_IN_ORIGINAL,
    "n_fft": _FIXED_STFT,
    "hop_length": _FIXED_STFT,
    "window_size": _FIXED_STFT,
    "wav": _NOT_IN_ORIGINAL,
    "n_inps": _NOT_IN_ORIGINAL,
    "n_hops": _NOT_IN_ORIGINAL,
    "n_segment": _NOT_IN_ORIGINAL,
    "n_total_segment": _NOT_IN_ORIGINAL,
    "n_segment_each": _NOT_IN_ORIGINAL,
    "prime_chunks": _NOT_IN_ORIGINAL,
    "sample_hop_length": _NOT_IN_ORIGINAL,
    "max_silence_pad_length": _NOT_IN_ORIGINAL,
    "ignore_boundaries": _NOT_IN_ORIGINAL,
}

# ---------------------------------------------------------------------------------------------
# Bundled demo model (jukebox/models/demo, trained by scripts/train_demo.sh on CPU; see its
# MODEL_CARD.md). demo_small_* give the architectures the training commands use; the demo_* sets
# add the bundled weights, whose paths are resolved from this package, not from the working dir.
# ---------------------------------------------------------------------------------------------
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "demo")

demo_small_vqvae = _register(
    "demo_small_vqvae",
    sr=22050, levels=3, downs_t=(3, 2, 2), strides_t=(2, 2, 2), emb_width=64, l_bins=256, l_mu=0.99,
    commit=0.02, spectral=0.0, multispectral=1.0, loss_fn="lmix", lmix_l2=1.0, lmix_linf=0.02,
    width=32, depth=2, m_conv=1.0, dilation_growth_rate=3, labels=False,
)
demo_small_prior = _register(
    "demo_small_prior",
    sr=22050, n_ctx=512, prior_width=256, prior_depth=6, heads=2, attn_order=2, blocks=32, init_scale=0.7,
    c_res=1, labels=False,
)
demo_small_upsampler = _register(
    "demo_small_upsampler",
    sr=22050, n_ctx=512, prior_width=128, prior_depth=4, heads=2, attn_order=2, blocks=32, init_scale=0.7,
    c_res=1, labels=False, cond_width=64, cond_depth=2, cond_dilation_growth_rate=3,
    cond_dilation_cycle=8, cond_c_res=1,
)
_register("demo_vqvae", demo_small_vqvae, restore_vqvae=os.path.join(DEMO_DIR, "vqvae.pth.tar"))
_register("demo_upsampler_level_0", demo_small_upsampler,
          level=0, restore_prior=os.path.join(DEMO_DIR, "prior_level_0.pth.tar"))
_register("demo_upsampler_level_1", demo_small_upsampler,
          level=1, restore_prior=os.path.join(DEMO_DIR, "prior_level_1.pth.tar"))
_register("demo_prior", demo_small_prior,
          level=2, restore_prior=os.path.join(DEMO_DIR, "prior_level_2.pth.tar"))

# What the sets shipped above give each compat-only key: loading them as shipped does not warn.
_SHIPPED_COMPAT_VALUES: dict[str, dict[str, Any]] = {
    name: {k: _plain(v) for k, v in values.items() if k in COMPAT_ONLY_KEYS}
    for name, values in HPARAMS_REGISTRY.items()
}
