"""Representations for music information retrieval (JukeMIR): the top-level prior's activations after chosen layers.

``Embedder(model, layers)(audio)`` for clips in Python; ``python -m jukebox.embed`` for folders of files
(``embed_dataset``). ``recipe`` holds how audio and conditioning are prepared, ``model`` how the truncated prior is
built and loaded.
"""
from jukebox.embed.dataset import RunSummary, embed_dataset, find_inputs, output_path
from jukebox.embed.embedder import POOLS, Embedder, Embedding, parse_layers, pool_frames, resample_frames
from jukebox.embed.model import EmbeddingModel, load_embedding_model, prior_depth
from jukebox.embed.recipe import (
           JUKEMIR,
           WINDOWS,
           Recipe,
           Window,
           prepare_audio,
           read_clip,
           recipe_labels,
           split_windows,
)

__all__ = ["Embedder", "Embedding", "EmbeddingModel", "JUKEMIR", "Recipe", "RunSummary", "Window", "POOLS", "WINDOWS",
           "embed_dataset", "find_inputs", "load_embedding_model", "output_path", "parse_layers", "pool_frames",
           "prepare_audio", "prior_depth", "read_clip", "recipe_labels", "resample_frames", "split_windows"]
