"""Training data and labels: audio file datasets and their loaders (``files_dataset``, ``data_processor``),
artist/genre id tables (``artist_genre_processor``), lyric text (``text_processor``) and the label vectors
of the priors (``labels``)."""
