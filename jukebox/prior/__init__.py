"""The priors over codes: the autoregressive transformer over one token sequence (``autoregressive``), its
conditioning on the level above and on labels (``conditioners``), and the prior of one level with labels
and lyrics (``prior``)."""
