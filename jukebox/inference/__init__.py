"""Inference: how a trained model is run to make music, kept apart from the models themselves.

From the token up: ``step_plan`` (one-token steps near the weight-read floor), ``cpu_kernels`` (their numba
kernels for float32 on CPU), ``static_step`` (the whole step with fixed shapes, replayed as a CUDA graph),
``sampler`` (``TokenSampler``: the sampling loop of one window, priming then steps and draws), ``schedule``
(which windows of which level are sampled, in what order), ``inputs`` (the checks and loading of a run's
inputs) and ``session`` (``SamplingSession``: one resumable run, its progress file, random state and
outputs). The models in ``jukebox.vqvae``, ``jukebox.transformer`` and ``jukebox.prior`` keep their plain
forward passes and the key/value cache; command lines such as ``jukebox/sample.py`` only turn their options
into the arguments of this package.
"""
