"""Checkpoints in the key naming of the HuggingFace ``transformers`` port (``JukeboxModel``), read as ours.

The port stores one flat state_dict for the whole model. Its names follow from ours by these rules (a key of
our VQ-VAE or of our prior of level ``L`` out of ``levels`` on the left, the port's on the right):

1. Prefix. VQ-VAE keys get ``vqvae.``. The priors are numbered from the top down: our level ``L`` prior becomes
   ``priors.{levels - 1 - L}.`` (the top-level prior is ``priors.0``, the level-0 upsampler ``priors.2``).
2. Transformer linear layers: the ``.w`` / ``.b`` leaves become ``.weight`` / ``.bias`` (same shapes: the port
   keeps the ``(n_in, n_out)`` layout). Layer norms ``ln_0`` / ``ln_1`` become ``layer_norm_0`` / ``layer_norm_1``.
3. Residual stacks: the convolution pair ``model.{d}.model.1`` / ``model.{d}.model.3`` of residual block ``d``
   becomes ``resnet_block.{d}.conv1d_1`` / ``resnet_block.{d}.conv1d_2``. (Upsampler conditioners built with
   ``cond_c_res=1`` call the stack ``blocks`` instead of ``model``; it maps the same way.)
4. Encoder level blocks: each downsampling step ``i`` is a pair (strided conv, residual stack) ``model.{i}.0`` /
   ``model.{i}.1``, flattened into ``downsample_block.{2i}`` / ``downsample_block.{2i+1}``; the last conv
   ``model.{down_t}`` is ``proj_out``.
5. Decoder level blocks: the first conv ``model.0`` is ``proj_in``; step ``i >= 1`` is a pair (residual stack,
   transposed conv) ``model.{i}.0`` / ``model.{i}.1``, flattened into ``upsample_block.{2(i-1)}`` /
   ``upsample_block.{2(i-1)+1}``. ``decoders.{l}.out`` keeps its name.
6. Codebooks ``bottleneck.level_blocks.{l}.k`` are ``bottleneck.level_blocks.{l}.codebook``.
7. Upsampler conditioner: ``conditioner_blocks.0.`` loses its index; its decoder stack ``cond`` is
   ``upsampler`` (with rule 5), its ``x_emb`` is ``embed_tokens`` and its ``ln`` is ``layer_norm``.
8. Label embeddings ``y_emb`` are ``metadata_embedding``; the artist and genre tables drop their inner ``.emb``
   (``y_emb.artist_emb.emb.weight`` -> ``metadata_embedding.artist_emb.weight``), the three timing tables keep it.
9. Separate lyrics encoder: ``prime_prior`` is ``encoder``; ``prime_state_proj``, ``prime_state_ln`` and
   ``prime_x_out`` are ``encoder.proj_in``, ``encoder.final_layer_norm`` and ``encoder.lm_head``.
10. Token embedding and output layer: ``x_emb`` is ``embed_tokens`` and ``prior.x_out`` is ``prior.fc_proj_out``.
    Everything else (``pos_emb.pos_emb``, ``start_token``, ``attn.c_attn``/``c_proj``/``c_enc_kv``,
    ``mlp.c_fc``/``c_proj``) keeps its name.

Reading goes the other way round: the names of the module being loaded are mapped forward with these rules and
the port's tensors are looked up under them, one by one, so reading one part of a sharded checkpoint touches only
that part's shards (``jukebox.utils.port_checkpoint``). Tied weights saved only once (safetensors drops the duplicate of
``x_out``/``x_emb``) are filled from their partner; tensors are cast to the module's dtypes.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from jukebox.utils.port_checkpoint import PortCheckpoint, local_fetch, open_port_file, open_port_folder

__all__ = ["to_transformers_key", "to_transformers_state_dict", "is_transformers_state_dict",
           "transformers_prefix", "from_transformers_state_dict", "load_transformers_state_dict"]

_CONV = r"(weight|bias)"
_STACK = r"(?:model|blocks)\.(\d+)\.model\.([13])\." + _CONV


def _resnet(d: str, conv: str, leaf: str) -> str:
    return f"resnet_block.{d}.conv1d_{1 if conv == '1' else 2}.{leaf}"


def _encoder_block(rest: str) -> str | None:
    if m := re.fullmatch(rf"model\.(\d+)\.0\.{_CONV}", rest):
        return f"downsample_block.{2 * int(m[1])}.{m[2]}"
    if m := re.fullmatch(rf"model\.(\d+)\.1\.{_STACK}", rest):
        return f"downsample_block.{2 * int(m[1]) + 1}." + _resnet(m[2], m[3], m[4])
    if m := re.fullmatch(rf"model\.(\d+)\.{_CONV}", rest):
        return f"proj_out.{m[2]}"
    return None


def _decoder_block(rest: str) -> str | None:
    if m := re.fullmatch(rf"model\.0\.{_CONV}", rest):
        return f"proj_in.{m[1]}"
    if m := re.fullmatch(rf"model\.(\d+)\.0\.{_STACK}", rest):
        return f"upsample_block.{2 * (int(m[1]) - 1)}." + _resnet(m[2], m[3], m[4])
    if m := re.fullmatch(rf"model\.(\d+)\.1\.{_CONV}", rest):
        return f"upsample_block.{2 * (int(m[1]) - 1) + 1}.{m[2]}"
    return None


def _vqvae_key(key: str) -> str:
    if m := re.fullmatch(r"(encoders\.\d+\.level_blocks\.\d+\.)(.*)", key):
        new = _encoder_block(m[2])
        return m[1] + new if new else key
    if m := re.fullmatch(r"(decoders\.\d+\.level_blocks\.\d+\.)(.*)", key):
        new = _decoder_block(m[2])
        return m[1] + new if new else key
    if m := re.fullmatch(r"(bottleneck\.level_blocks\.\d+\.)k", key):
        return m[1] + "codebook"
    return key


_PRIOR_RULES = [  # applied in order, each at most once
    (r"^y_emb\.(artist_emb|bow_genre_emb)\.emb\.", r"metadata_embedding.\1."),
    (r"^y_emb\.", "metadata_embedding."),
    (r"^prime_state_proj\.", "encoder.proj_in."),
    (r"^prime_state_ln\.", "encoder.final_layer_norm."),
    (r"^prime_x_out\.", "encoder.lm_head."),
    (r"^prime_prior\.", "encoder."),
    (r"^conditioner_blocks\.0\.x_emb\.", "conditioner_blocks.embed_tokens."),
    (r"^conditioner_blocks\.0\.ln\.", "conditioner_blocks.layer_norm."),
    (r"^(prior|encoder)\.x_emb\.", r"\1.embed_tokens."),
    (r"^prior\.x_out\.", "prior.fc_proj_out."),
    (r"\.ln_(\d)\.", r".layer_norm_\1."),
    (r"\.w$", ".weight"),
    (r"\.b$", ".bias"),
]


def _prior_key(key: str) -> str:
    if m := re.fullmatch(r"conditioner_blocks\.0\.cond\.(.*)", key):
        new = _decoder_block(m[1])
        return "conditioner_blocks.upsampler." + new if new else key
    for pattern, replacement in _PRIOR_RULES:
        key = re.sub(pattern, replacement, key, count=1)
    return key


def transformers_prefix(level: int | None, levels: int | None) -> str:
    """``vqvae.`` for the VQ-VAE (level None), else ``priors.{levels - 1 - level}.``."""
    if level is None:
        return "vqvae."
    if levels is None or not 0 <= level < levels:
        raise ValueError(f"prior level {level} is outside 0..{levels}-1")
    return f"priors.{levels - 1 - level}."


def to_transformers_key(key: str, level: int | None = None, levels: int | None = None) -> str:
    """The port's name of our key ``key`` of the VQ-VAE (level None) or of the level-``level`` prior."""
    return transformers_prefix(level, levels) + (_vqvae_key(key) if level is None else _prior_key(key))


def to_transformers_state_dict(vqvae_state: Mapping[str, torch.Tensor],
                               prior_states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state_dict in the port's naming from our VQ-VAE and per-level prior state_dicts (index = level)."""
    out = {to_transformers_key(k, None): v for k, v in vqvae_state.items()}
    levels = len(prior_states)
    for level, state in enumerate(prior_states):
        out.update({to_transformers_key(k, level, levels): v for k, v in state.items()})
    return out


def is_transformers_state_dict(state: Mapping[str, object]) -> bool:
    """True for a flat state_dict whose keys all start with ``vqvae.`` or ``priors.`` (a lazy ``PortCheckpoint``
    is judged by its keys alone, so that nothing is read)."""
    keys = [k for k in state if isinstance(k, str)]
    named = bool(keys) and len(keys) == len(state) and all(k.startswith(("vqvae.", "priors.")) for k in keys)
    return named and (isinstance(state, PortCheckpoint) or all(isinstance(v, torch.Tensor) for v in state.values()))


def _tied_partners(module: nn.Module) -> dict[str, list[str]]:
    """For every state_dict key of a parameter shared under several names, the other names."""
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {n: [m for m in group if m != n] for group in names.values() if len(group) > 1 for n in group}


def from_transformers_state_dict(state: Mapping[str, torch.Tensor], module: nn.Module, level: int | None = None,
                                 levels: int | None = None) -> dict[str, torch.Tensor]:
    """Our state_dict for ``module`` (the VQ-VAE when level is None, else the level-``level`` prior) taken out of
    a state_dict in the port's naming. Only the module's own tensors are looked up, so a lazy ``state`` (a
    ``PortCheckpoint``) reads nothing of the other parts. Raises ValueError naming the missing tensors, or the
    tensors whose shapes differ (a checkpoint of another model)."""
    expected = module.state_dict(keep_vars=True)
    tied = _tied_partners(module)
    out, missing, mismatched = {}, [], []
    for key, target in expected.items():
        candidates = [key] + tied.get(key, [])
        found = next((to_transformers_key(c, level, levels) for c in candidates
                      if to_transformers_key(c, level, levels) in state), None)
        if found is None:
            missing.append(to_transformers_key(key, level, levels))
            continue
        tensor = state[found]
        if tuple(tensor.shape) != tuple(target.shape):
            mismatched.append(f"{found} is {tuple(tensor.shape)} there but {tuple(target.shape)} here")
            continue
        out[key] = tensor.to(dtype=target.dtype)
    what = "the VQ-VAE" if level is None else f"the level-{level} prior ({transformers_prefix(level, levels)}*)"
    if mismatched:
        raise ValueError(f"the transformers-format checkpoint is not one of this model: for {what}, "
                         f"{_listing(mismatched, 3)}. Pick the --model that matches the checkpoint.")
    if missing:
        raise ValueError(f"the transformers-format checkpoint lacks {len(missing)} tensors of {what}: "
                         f"{_listing(missing, 10)}. Is it the checkpoint of the same model (levels, widths, lyrics)?")
    return out


def _listing(items: list[str], limit: int) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_transformers_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The flat state_dict of a saved ``JukeboxModel``: a ``.bin``/``.pt`` file, a ``.safetensors`` file, or a
    ``save_pretrained`` folder (sharded or not), as a lazy ``PortCheckpoint``: tensors are read memory-mapped
    from their shard when first looked up."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return open_port_folder(local_fetch(path), path)
    return open_port_file(path)
