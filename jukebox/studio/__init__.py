"""Jukebox Studio: co-compose in the browser (``python -m jukebox.studio``); see ``jukebox.studio.app``."""
