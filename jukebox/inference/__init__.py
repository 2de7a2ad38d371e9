"""Inference: how a trained model is run to make music, kept apart from the models themselves.

The window schedule (``schedule``: which windows of which level are sampled, in what order) and the resumable
sampling session (``session``: one run's settings, progress file, random state and outputs, with the checks of
its inputs in ``inputs``) live here, as will the rest of the machinery that only serves sampling. The models in
``jukebox.vqvae`` and ``jukebox.prior`` know nothing of it; command lines such as ``jukebox/sample.py`` only
turn their options into the arguments of this package.
"""
