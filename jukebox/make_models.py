"""Build models from hyperparameters and restore their weights."""
from __future__ import annotations

import difflib
import functools
import gc
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from jukebox.data.labels import EmptyLabeller, Labeller
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    state_dict_problems,
    strip_module_prefix,
)
from jukebox.utils.dist_utils import print_once
from jukebox.utils.hub import is_hub_uri, parse_hub_uri
from jukebox.utils.port_checkpoint import PortCheckpoint, is_port_folder, local_fetch, open_port_folder
from jukebox.utils.remote import resolve_path
from jukebox.utils.sources import (
    ANY_SOURCE,
    HUB_REPOS,
    Origin,
    check_source,
    label_tables_source,
    locate_weights,
    model_origin,
)
from jukebox.utils.transformers_format import (
    from_transformers_state_dict,
    is_transformers_state_dict,
    load_transformers_state_dict,
    transformers_prefix,
)
from jukebox.vqvae.vqvae import VQVAE, calculate_hop_lengths, calculate_strides

__all__ = ["calculate_strides", "calculate_hop_lengths", "round_sample_length", "resolve_checkpoint_path",
           "read_checkpoint", "restore_model", "make_vqvae", "make_prior", "make_labeller", "MODELS", "LazyPrior",
           "make_model", "model_sets", "model_sample_rate", "model_name", "resolve_model", "encoder_part"]

# Each model is its VQ-VAE's hparams set, then one prior set per level from the bottom up.
# Add your own, e.g. MODELS["my_model"] = ("my_small_vqvae", "my_small_upsampler", "my_small_prior").
MODELS: dict[str, tuple[str, ...]] = {
    "5b": ("vqvae", "upsampler_level_0", "upsampler_level_1", "prior_5b"),
    "5b_lyrics": ("vqvae", "upsampler_level_0", "upsampler_level_1", "prior_5b_lyrics"),
    "1b_lyrics": ("vqvae", "upsampler_level_0", "upsampler_level_1", "prior_1b_lyrics"),
    # small unconditioned model bundled in jukebox/models/demo (scripts/train_demo.sh; see its MODEL_CARD.md)
    "demo": ("demo_vqvae", "demo_upsampler_level_0", "demo_upsampler_level_1", "demo_prior"),
}


def round_sample_length(sample_length_in_seconds: float, sr: int, strides_t: Sequence[int],
                        downs_t: Sequence[int]) -> int:
    """``sample_length_in_seconds * sr`` rounded down to a multiple of the top level's hop length."""
    top_hop = calculate_hop_lengths(strides_t, downs_t)[-1]
    return int(sample_length_in_seconds * sr // top_hop) * top_hop


def resolve_checkpoint_path(path: str) -> str:
    """A local path for ``path``; an ``http(s)://`` URL is downloaded once into the cache (jukebox.utils.remote)."""
    return resolve_path(path)


def _is_transformers_folder_or_file(path: str) -> bool:
    """Whether local ``path`` is a transformers-format ``save_pretrained`` folder or ``.safetensors`` file."""
    return os.path.isdir(path) or path.endswith(".safetensors")


def _part_prefix(model: nn.Module) -> str:
    """The port's key prefix of ``model``'s tensors: ``vqvae.`` or ``priors.{i}.``."""
    return "vqvae." if isinstance(model, VQVAE) else transformers_prefix(model.level, model.levels)


def read_checkpoint(checkpoint_path: str, origin: Origin = ANY_SOURCE, prefix: str = "") -> Mapping[str, Any]:
    """The contents of ``checkpoint_path``: a checkpoint dict, or the port's flat state_dict (read lazily, see
    ``jukebox.utils.port_checkpoint``) of a folder, a ``.safetensors`` file or ``hf://owner/name[@revision]``.

    URLs are downloaded once into the cache; ``origin`` and ``prefix`` (the part wanted) choose among the
    sources of a released model's part (``jukebox.utils.sources.locate_weights``).
    """
    located = locate_weights(checkpoint_path, prefix, origin)
    if isinstance(located, PortCheckpoint):
        return located
    if _is_transformers_folder_or_file(located):
        return load_transformers_state_dict(located)
    return load_checkpoint(located)


def restore_model(hps: Hyperparams, model: nn.Module, checkpoint_path: str,
                  checkpoint: Mapping[str, Any] | None = None, origin: Origin = ANY_SOURCE) -> None:
    """Load ``checkpoint_path`` into ``model`` (see :func:`read_checkpoint`); '' loads nothing.

    ``checkpoint``: its contents when the caller has read them already, so that the file is read once.
    ``origin``: the other sources of a released model's part. Sets ``model.step`` to the checkpoint's step (0
    without one).
    """
    model.step = 0
    if not checkpoint_path:
        return
    if checkpoint is None:
        checkpoint = read_checkpoint(checkpoint_path, origin, _part_prefix(model))
    if isinstance(model, VQVAE):
        _check_vqvae_sample_rate(checkpoint, checkpoint_path, hps.sr)
    state_dict = checkpoint.get("model", checkpoint)
    if is_transformers_state_dict(state_dict):
        state_dict = _from_transformers(state_dict, model, checkpoint_path)
    load_state_dict_checked(model, encoder_part(strip_module_prefix(state_dict), model))
    model.step = int(checkpoint.get("step", 0))


def _check_vqvae_sample_rate(checkpoint: Mapping[str, Any], path: str, sr: int) -> None:
    """Refuse a VQ-VAE checkpoint saved with other hps.sr: its codes would describe audio at another speed."""
    saved = checkpoint.get("hps")
    if isinstance(saved, Mapping) and saved.get("sr") and int(saved["sr"]) != int(sr):
        raise CheckpointError(f"{path} is a VQ-VAE trained at {int(saved['sr'])} Hz but sr={sr}; pass "
                              f"--sr={int(saved['sr'])}, or resample your audio set and train a VQ-VAE at {sr} Hz")


def make_vqvae(hps: Hyperparams, device: str | torch.device = "cpu",
               checkpoint: Mapping[str, Any] | None = None, origin: Origin = ANY_SOURCE) -> VQVAE:
    """The VQ-VAE of ``hps`` on ``device``, restored from ``hps.restore_vqvae`` if set (``checkpoint``: its
    contents when the caller has read them already with :func:`read_checkpoint`; ``origin``: the other sources
    of a released VQ-VAE).

    Without ``hps.sample_length``, it is set (in ``hps``, as the original does) to
    ``sample_length_in_seconds * sr`` rounded down to a multiple of the top hop length. On the
    ``meta`` device (shapes only) no weights are restored. The model is in eval mode with frozen
    parameters unless ``hps.train`` (and not ``hps.prior``); training from restored weights
    restarts the codebook EMAs as if every code had been used equally.
    """
    device = torch.device(device)
    if not hps.sample_length:
        if not hps.sample_length_in_seconds:
            raise ValueError("set hps.sample_length (samples) or hps.sample_length_in_seconds to build the VQ-VAE")
        hps.sample_length = round_sample_length(hps.sample_length_in_seconds, hps.sr, hps.strides_t, hps.downs_t)
        print_once(f"Setting sample length to {hps.sample_length} (i.e. {hps.sample_length / hps.sr} seconds) "
                   f"to be a multiple of {calculate_hop_lengths(hps.strides_t, hps.downs_t)[-1]}")

    block_kwargs = dict(width=hps.width, depth=hps.depth, m_conv=hps.m_conv,
                        dilation_growth_rate=hps.dilation_growth_rate, dilation_cycle=hps.dilation_cycle,
                        reverse_decoder_dilation=hps.vqvae_reverse_decoder_dilation)
    with device:
        vqvae = VQVAE(input_shape=(hps.sample_length, 1), levels=hps.levels, downs_t=hps.downs_t,
                      strides_t=hps.strides_t, emb_width=hps.emb_width, l_bins=hps.l_bins, mu=hps.l_mu,
                      multipliers=hps.hvqvae_multipliers, use_bottleneck=hps.use_bottleneck, **block_kwargs)

    if device.type != "meta":
        restore_model(hps, vqvae, hps.restore_vqvae, checkpoint, origin)
    if hps.train and not hps.prior:
        if hps.restore_vqvae and device.type != "meta":
            for level, block in enumerate(vqvae.bottleneck.level_blocks):
                num_tokens = (hps.sample_length // vqvae.hop_lengths[level]) * hps.bs
                block.restore_k(num_tokens=num_tokens, threshold=hps.revival_threshold)
    else:
        vqvae.eval()
        vqvae.requires_grad_(False)
    return vqvae


def make_prior(hps: Hyperparams, vqvae: VQVAE, device: str | torch.device = "cpu",
               checkpoint: Mapping[str, Any] | None = None, encode_only: bool = False,
               full_depth: int | None = None) -> nn.Module:
    """The prior (or upsampler) of level ``hps.level`` on top of ``vqvae``, restored from
    ``hps.restore_prior`` if set (``checkpoint``: its contents when the caller has read them already with
    :func:`read_checkpoint`).

    ``encode_only``: built without the output layer (``x_out``), for its activations only; it then also loads the
    checkpoint of a deeper prior of the same hps, keeping its first ``hps.prior_depth`` blocks (:func:`encoder_part`).
    ``full_depth``: the depth of that deeper prior (default ``hps.prior_depth``), whose residual scale
    (``hps.res_scale``: ``1 / depth``) the blocks keep.

    Its windows are ``hps.n_ctx`` tokens; the other levels' code shapes scale with it. With
    ``hps.fp16_params`` the transformer's linear weights are stored in float16, except when training
    (``hps.train``): then all weights are float32 and the trainer writes those in float16 to its
    checkpoints. On the ``meta`` device (shapes only) nothing is allocated or restored. Eval mode with
    frozen parameters unless ``hps.train``.
    """
    from jukebox.prior.prior import SimplePrior
    from jukebox.transformer.ops import convert_conv_weights_to_fp16

    device = torch.device(device)
    # Activation checkpointing only matters when training.
    prior_kwargs = dict(
        input_shape=(hps.n_ctx,), bins=vqvae.l_bins, width=hps.prior_width, depth=hps.prior_depth, heads=hps.heads,
        attn_order=hps.attn_order, blocks=hps.blocks, spread=hps.spread, attn_dropout=hps.attn_dropout,
        resid_dropout=hps.resid_dropout, emb_dropout=hps.emb_dropout, zero_out=hps.zero_out,
        res_scale=hps.res_scale, pos_init=hps.pos_init, init_scale=hps.init_scale, m_attn=hps.m_attn,
        m_mlp=hps.m_mlp, checkpoint_res=hps.c_res if hps.train else 0,
        checkpoint_attn=hps.c_attn if hps.train else 0, checkpoint_mlp=hps.c_mlp if hps.train else 0,
        full_depth=full_depth)
    if encode_only:
        prior_kwargs["only_encode"] = True
    # cond_c_res also decides the module names of the conditioner's residual stacks (blocks vs model).
    x_cond_kwargs = dict(
        out_width=hps.prior_width, init_scale=hps.init_scale, width=hps.cond_width, depth=hps.cond_depth,
        m_conv=hps.cond_m_conv, dilation_growth_rate=hps.cond_dilation_growth_rate,
        dilation_cycle=hps.cond_dilation_cycle, zero_out=hps.cond_zero_out, res_scale=hps.cond_res_scale,
        checkpoint_res=hps.cond_c_res)
    y_cond_kwargs = dict(
        out_width=hps.prior_width, init_scale=hps.init_scale, y_bins=hps.y_bins, t_bins=hps.t_bins,
        sr=hps.sr, min_duration=hps.min_duration, max_duration=hps.max_duration,
        max_bow_genre_size=hps.max_bow_genre_size)
    prime_kwargs = dict(use_tokens=hps.use_tokens, prime_loss_fraction=hps.prime_loss_fraction,
                        n_tokens=hps.n_tokens, bins=hps.n_vocab)
    if hps.use_tokens and not hps.single_enc_dec:
        prime_kwargs.update(
            width=hps.prime_width, depth=hps.prime_depth, heads=hps.prime_heads, attn_order=hps.prime_attn_order,
            blocks=hps.prime_blocks, spread=hps.prime_spread, attn_dropout=hps.prime_attn_dropout,
            resid_dropout=hps.prime_resid_dropout, emb_dropout=hps.prime_emb_dropout,
            zero_out=hps.prime_zero_out, res_scale=hps.prime_res_scale, pos_init=hps.prime_pos_init,
            init_scale=hps.prime_init_scale, m_attn=hps.prime_m_attn, m_mlp=hps.prime_m_mlp,
            checkpoint_res=hps.prime_c_res if hps.train else 0,
            checkpoint_attn=hps.prime_c_attn if hps.train else 0,
            checkpoint_mlp=hps.prime_c_mlp if hps.train else 0)

    # This level gets n_ctx codes per window; the other levels scale with it.
    level_tokens = vqvae.z_shapes[hps.level][0]
    z_shapes = [(z_shape[0] * hps.n_ctx // level_tokens,) for z_shape in vqvae.z_shapes]
    with device:
        prior = SimplePrior(z_shapes=z_shapes, l_bins=vqvae.l_bins, encoder=vqvae.encode, decoder=vqvae.decode,
                            level=hps.level, downs_t=vqvae.downs_t, strides_t=vqvae.strides_t, labels=hps.labels,
                            prior_kwargs=prior_kwargs, x_cond_kwargs=x_cond_kwargs, y_cond_kwargs=y_cond_kwargs,
                            prime_kwargs=prime_kwargs, copy_input=hps.copy_input, labels_v3=hps.labels_v3,
                            merged_decoder=hps.merged_decoder, single_enc_dec=hps.single_enc_dec)
    prior.alignment_head = hps.get("alignment_head", None)
    prior.alignment_layer = hps.get("alignment_layer", None)
    if hps.fp16_params and not hps.train:
        convert_conv_weights_to_fp16(prior)

    if device.type != "meta":
        restore_model(hps, prior, hps.restore_prior, checkpoint)
    if hps.train:
        prior.train()
    else:
        prior.eval()
        prior.requires_grad_(False)
    return prior


_BLOCK_KEY = re.compile(r"prior\.transformer\._attn_mods\.(\d+)\.")


def encoder_part(state_dict: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The part of a prior's ``state_dict`` that an encode-only prior ``module`` (``make_prior(..., encode_only=True)``)
    holds: without the output layer ``prior.x_out`` and the blocks of the top transformer deeper than its own. Any other
    module's state_dict is returned unchanged."""
    prior = getattr(module, "prior", None)
    if not getattr(prior, "only_encode", False):
        return state_dict
    depth = len(prior.transformer._attn_mods)

    def kept(key: str) -> bool:
        block = _BLOCK_KEY.match(key)
        return key != "prior.x_out.weight" and (block is None or int(block.group(1)) < depth)
    return {k: v for k, v in state_dict.items() if kept(k)}


def _from_transformers(state_dict: Mapping[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """Our part of a transformers-format (``JukeboxModel``) state_dict: the VQ-VAE's, or the prior's of its level.
    Only that part's tensors are read; a checkpoint of another model is a ``CheckpointError`` naming ``where``."""
    try:
        if isinstance(model, VQVAE):
            return from_transformers_state_dict(state_dict, model)
        return from_transformers_state_dict(state_dict, model, model.level, model.levels)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _read_weights(path: str, model: nn.Module, origin: Origin = ANY_SOURCE) -> dict[str, torch.Tensor]:
    """The state_dict for ``model`` in ``path`` (our checkpoint or the transformers port's), memory-mapped where
    the file format allows, so tensors are paged in as they are used rather than all at once; of a sharded
    checkpoint only the shards holding ``model``'s tensors are fetched and opened."""
    located = locate_weights(path, _part_prefix(model), origin)
    if isinstance(located, PortCheckpoint) or _is_transformers_folder_or_file(located):
        state = located if isinstance(located, PortCheckpoint) else load_transformers_state_dict(located)
        return _from_transformers(state, model, path)
    try:
        with torch.serialization.safe_globals([Hyperparams]):
            checkpoint = torch.load(located, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # old (non-zip) files cannot be memory-mapped; load_checkpoint also words the errors
        checkpoint = load_checkpoint(located)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if is_transformers_state_dict(state):
        return _from_transformers(state, model, path)
    return encoder_part(strip_module_prefix(state), model)


def _retie(module: nn.Module, groups: list[list[str]]) -> None:
    """Make every name of a tied group point at the first name's parameter again (assign-loading unties them)."""
    for names in groups:
        param = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, param)


def make_labeller(prior: nn.Module, ids_dir: str | os.PathLike | None = None,
                  hub_repo: str = "") -> Labeller | EmptyLabeller:
    """The labeller of ``prior`` (a ``SimplePrior``): its label vectors, lyric windows and artist/genre ids.
    Reads the id tables from ``ids_dir`` (a folder in the original's or the hub's layout, or ``hf://...``; default:
    ``$JUKEBOX_IDS_DIR``, else the cache, where the released ones are downloaded to the first time). When those
    cannot be had and ``hub_repo`` is given, the hub repository's tables are used instead."""
    if not prior.y_cond:
        return EmptyLabeller()
    return Labeller(prior.y_emb.max_bow_genre_size, prior.n_tokens, prior.sample_length, v3=prior.labels_v3,
                    ids_dir=ids_dir, hub_repo=hub_repo)


class LazyPrior:
    """A prior that holds no weights until its level runs.

    Built on the ``meta`` device, it already answers everything the sampling schedule asks before sampling
    (``n_ctx``, ``raw_to_tokens``, ``labeller``, ``get_y``, ``get_z_conds``, ...; reading an attribute it does not
    have reads the module's). ``load(device)`` reads ``hps.restore_prior`` and assigns its tensors into the module
    as they come (memory-mapped where possible, so host memory peaks at about one prior), then moves it to ``device``;
    ``unload()`` returns it to shapes only. ``labeller`` is made from the id tables in ``ids_dir`` on first use
    (default: the tables of the weights' source). ``origin``: the other sources of a released prior.
    ``encode_only``, ``full_depth``: see :func:`make_prior`.
    """

    def __init__(self, hps: Hyperparams, vqvae: VQVAE, origin: Origin = ANY_SOURCE, encode_only: bool = False,
                 full_depth: int | None = None) -> None:
        self.hps, self.vqvae, self.origin = hps, vqvae, origin
        self.encode_only, self.full_depth = encode_only, full_depth
        self.module = make_prior(Hyperparams({**hps, "restore_prior": ""}), vqvae, "meta", encode_only=encode_only,
                                 full_depth=full_depth)
        self.tied = _tied_groups(self.module)
        self.device: torch.device | None = None
        self.ids_dir: str | os.PathLike | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "module":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.module, name)

    @property
    def labeller(self) -> Labeller | EmptyLabeller:
        if self.module.labeller is None:
            ids_dir = self.ids_dir
            if ids_dir is None:
                ids_dir = label_tables_source(self.hps.restore_prior, self.origin)
            fallback = self.origin.hub_repo if self.origin.source is None else ""
            self.module.labeller = make_labeller(self.module, ids_dir, fallback)
        return self.module.labeller

    @labeller.setter
    def labeller(self, labeller: Labeller | EmptyLabeller) -> None:
        self.module.labeller = labeller

    @property
    def loaded(self) -> bool:
        return self.device is not None

    def load(self, device: str | torch.device) -> nn.Module:
        """The prior with its weights, on ``device``."""
        device = torch.device(device)
        if self.loaded:
            return self.module.to(device)
        if not self.hps.restore_prior:
            print_once(f"Level {self.module.level} prior has no restore_prior: using random weights")
            fresh = make_prior(self.hps, self.vqvae, "cpu", encode_only=self.encode_only, full_depth=self.full_depth)
            fresh.labeller = self.module.labeller
            self.module = fresh
        else:
            self._assign(_read_weights(self.hps.restore_prior, self.module, self.origin))
        self.module.to(device)
        self.device = device
        return self.module

    def _assign(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.module.state_dict(keep_vars=True)
        problems = state_dict_problems(expected, state)
        if problems:
            raise CheckpointError(f"{self.hps.restore_prior} does not fit the level-{self.module.level} prior "
                                  "(were its hps the same as when it was saved?): " + "; ".join(problems))
        state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()}
        try:
            self.module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{self.hps.restore_prior} does not fit the level-{self.module.level} prior "
                                  f"(were its hps the same as when it was saved?): {e}") from None
        _retie(self.module, self.tied)
        leftovers = [n for n, t in [*self.module.named_parameters(), *self.module.named_buffers()] if t.is_meta]
        if leftovers:
            raise CheckpointError(f"the level-{self.module.level} prior has tensors outside its state_dict that "
                                  f"stay unset after loading: {', '.join(leftovers[:5])}")

    def unload(self) -> None:
        """Drop the weights (back to shapes only) and free their memory."""
        if not self.loaded:
            return
        self.module.to("meta")
        self.device = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _tied_groups(module: nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def model_sets(model: str) -> tuple[str, ...]:
    """The hparams sets of ``MODELS[model]`` (VQ-VAE first, then the priors bottom up); an unknown name is an
    error that lists the known ones."""
    if model not in MODELS:
        raise _unknown_model(model)
    return MODELS[model]


def _unknown_model(model: str) -> ValueError:
    close = difflib.get_close_matches(model, list(MODELS), n=3)
    return ValueError(f"unknown model {model!r}; known models: {', '.join(MODELS)}"
                      + (f" (did you mean {', '.join(close)}?)" if close else "")
                      + ", a hub repository such as hf://openai/jukebox-1b-lyrics, or a folder in its layout."
                      " Add your own to MODELS in jukebox/make_models.py.")


def resolve_model(model: str) -> tuple[str, str]:
    """(name in ``MODELS``, weights reference) of a ``--model`` value: a ``MODELS`` name (its registry's weights:
    reference ''), ``hf://owner/name[@revision]`` of a released model, or a local folder in the transformers
    port's layout, whose model is the one its tensors fit."""
    if model in MODELS:
        return model, ""
    if is_hub_uri(model):
        repo = parse_hub_uri(model)
        by_name = {hub.split("/")[1]: name for name, hub in HUB_REPOS.items()}
        name = by_name.get(repo.repo_id.split("/")[1])
        if name is None:
            raise ValueError(f"{model}: which model a hub repository holds is known for {', '.join(by_name)}; "
                             "for another, download it (hf download OWNER/NAME --local-dir DIR) and pass "
                             "--model=DIR, whose tensors tell the model")
        return name, model
    if is_port_folder(model):
        return _folder_model(os.path.abspath(model)), model
    raise _unknown_model(model)


def model_name(model: str) -> str:
    """The ``MODELS`` name of a ``--model`` value (see :func:`resolve_model`)."""
    return resolve_model(model)[0]


@functools.lru_cache(maxsize=8)
def _folder_model(folder: str) -> str:
    """The ``MODELS`` entry whose VQ-VAE and top prior the port checkpoint in ``folder`` fits (shapes only, from
    the shards' metadata: no tensor data is read; see ``PortCheckpoint.shape``)."""
    checkpoint = open_port_folder(local_fetch(folder), folder)
    for name, sets in MODELS.items():
        vqvae_hps = setup_hparams(sets[0], {})
        vqvae_hps.sample_length = calculate_hop_lengths(vqvae_hps.strides_t, vqvae_hps.downs_t)[-1]
        vqvae = make_vqvae(vqvae_hps, "meta")
        if not _fits(checkpoint, vqvae):
            continue
        top = make_prior(setup_hparams(sets[-1], dict(restore_prior="")), vqvae, "meta")
        if len(sets) - 1 == vqvae.levels and _fits(checkpoint, top):
            return name
    raise CheckpointError(f"{folder} fits none of the models {', '.join(MODELS)} (compared: the VQ-VAE's and the "
                          "top prior's tensor names and shapes); add its model to MODELS in jukebox/make_models.py")


def _fits(checkpoint: PortCheckpoint, module: nn.Module) -> bool:
    prefix = _part_prefix(module)
    keys = [k for k in checkpoint.weight_map if k.startswith(prefix)]
    if not keys:
        return False
    try:
        _from_transformers({k: _ShapeOnly(checkpoint.shape(k)) for k in keys}, module, checkpoint.where)
    except CheckpointError:
        return False
    return True


class _ShapeOnly:
    """A tensor's shape without its data, for comparing a checkpoint with a model built on ``meta``."""

    def __init__(self, shape: torch.Size) -> None:
        self.shape = shape

    def to(self, dtype: torch.dtype) -> _ShapeOnly:
        return self


def model_sample_rate(model: str) -> int:
    """The audio sample rate (Hz) ``model``'s VQ-VAE was trained at."""
    return int(setup_hparams(model_sets(model_name(model))[0], {}).sr)


def make_model(model: str, device: str | torch.device, hps: Hyperparams, levels: Sequence[int] | None = None,
               weights_source: str | None = None, prior_overrides: Mapping[str, Any] | None = None,
               encode_only: bool = False) -> tuple[VQVAE, list[LazyPrior]]:
    """The VQ-VAE (on ``device``, restored) and the priors of ``model`` as ``LazyPrior`` s.

    ``model``: a ``MODELS`` name, ``hf://owner/name[@revision]`` or a port-layout folder (:func:`resolve_model`).
    ``weights_source``: ``openai`` or ``hf`` keeps only that source of a released model's weights (default: the
    cache, OpenAI's storage, then the hub; ``jukebox.utils.sources``).
    ``hps`` gives ``sample_length`` or ``sample_length_in_seconds``; ``hps.sample_length`` is set to the VQ-VAE's
    (rounded to a multiple of the top hop). levels: which priors to return (indices into the model's levels,
    negative ones from the top; default all, bottom first). ``prior_overrides``: hparams set on each prior's;
    ``encode_only``: the priors are built for their activations only (see :func:`make_prior`); a ``prior_depth``
    among ``prior_overrides`` then builds the first blocks of each, with the residual scale of its full depth.
    """
    name, ref = resolve_model(model)
    source = check_source(weights_source)
    origin = model_origin(name, ref, source)
    vqvae_name, *prior_names = model_sets(name)
    vqvae = make_vqvae(setup_hparams(vqvae_name, dict(
        sample_length=hps.get("sample_length", 0), sample_length_in_seconds=hps.get("sample_length_in_seconds", 0),
        **({"restore_vqvae": ref} if ref else {}))), device, origin=origin)
    hps.sample_length = vqvae.sample_length
    levels = range(len(prior_names)) if levels is None else levels
    overrides = {**(prior_overrides or {}), **({"restore_prior": ref} if ref else {})}
    priors = [LazyPrior(setup_hparams(prior_names[level], overrides), vqvae, origin, encode_only,
                        setup_hparams(prior_names[level], {}).prior_depth if encode_only else None)
              for level in levels]
    return vqvae, priors
