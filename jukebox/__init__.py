"""Jukebox: music as raw audio from a hierarchical VQ-VAE and sparse-transformer priors.

The packages, from the bottom up: ``vqvae`` (audio <-> codes), ``transformer`` (the sparse transformer,
its attention patterns and key/value cache), ``prior`` (the priors over codes and their conditioning),
``inference`` (fast sampling steps, the token sampler, the window schedule and the resumable session),
``data`` (audio datasets and labels), ``utils``. ``hparams``, ``make_models``, ``train`` and ``sample``
turn configuration into models and runs; the README's "Code map" has one line per module.
"""
