"""Representations for music information retrieval (JukeMIR): the top-level prior's activations after chosen layers.

``Embedder(model, layers)(audio)`` for clips in Python; ``python -m jukebox.embed`` for folders of files
(``embed_dataset``). ``recipe`` holds how audio and conditioning are prepared, ``model`` how the truncated prior is
built and loaded.
"""
from jukebox.embed.dataset import RunSummary, embed_dataset
from jukebox.embed.embedder import Embedder, Embedding
from jukebox.embed.model import EmbeddingModel, load_embedding_model, prior_depth
from jukebox.embed.recipe import JUKEMIR, Recipe

__all__ = ["Embedder", "Embedding", "EmbeddingModel", "JUKEMIR", "Recipe", "RunSummary", "embed_dataset",
           "load_embedding_model", "prior_depth"]
