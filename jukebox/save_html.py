"""The sample viewer: ``{logdir}/index.html`` lists the samples of one level, and each
``{logdir}/item_{i}/index.html`` plays its audio while highlighting the lyric character being sung.

Serve the directory (``python -m http.server --bind 127.0.0.1``) and open ``index.html``. Every URL
is relative and nothing outside the directory is loaded. Lyrics, artist and genre are user text: they reach the
page escaped (``html.escape``) or inside a JSON data block whose ``<``, ``>`` and ``&`` are
\\u-escaped, and the script inserts them with ``textContent`` only.
"""
from __future__ import annotations

import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

from jukebox.utils.atomic import atomic_write

__all__ = ["save_html", "alignment_frames", "script_json"]

# As in the original viewer, attention column j belongs to lyric character j - 1: the prior's lyric
# tokens run one position behind the characters shown (column 0 means "before the first character").
_LYRIC_SHIFT = 1
# One alignment row of the page per 16 top-level tokens, as the original's animation used.
_TOKENS_PER_FRAME = 16
_IMAGE_SIZE = (1024, 512)  # (time, characters)

_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})

_STYLE = """body { font-family: sans-serif; max-width: 1024px; margin: auto; padding: 1em; }
audio, img { width: 100%; }
pre { white-space: pre-wrap; }
#lyrics { position: relative; max-height: 60vh; overflow-y: auto; font-size: 1.3em; line-height: 1.5; }
#lyrics .sung { background: #ffd54f; color: #000; border-radius: 2px; }"""

# Both pages share one head; $title and $style are filled in with the page.
_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<link rel="icon" href="data:,">
<style>
$style
</style>
</head>
"""

_INDEX_PAGE = Template(_HEAD + """<body>
<h1>$title</h1>
<ol>
$items
</ol>
</body>
</html>
""")

_INDEX_ITEM = Template("""<li>
<h2><a href="item_$i/index.html">Item $i</a></h2>
<p>Artist: $artist, Genre: $genre</p>
<audio controls preload="none" src="item_$i/audio.wav"></audio>
<details><summary>Lyrics</summary><pre>$lyrics</pre></details>
</li>""")

_ITEM_PAGE = Template(_HEAD + """<body>
<p><a href="../index.html">All samples</a></p>
<h1>$title</h1>
<p>Artist: <span id="artist">$artist</span>, Genre: <span id="genre">$genre</span></p>
<audio id="audio" src="audio.wav" controls preload="auto"></audio>
$image
<pre id="lyrics"></pre>
<script type="application/json" id="jukebox-data">$data</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("jukebox-data").textContent);
  var box = document.getElementById("lyrics");
  var audio = document.getElementById("audio");
  var fragment = document.createDocumentFragment();
  var spans = Array.from(data.lyrics, function (c, i) {
    var span = document.createElement("span");
    span.textContent = c;
    span.dataset.i = String(i);
    fragment.appendChild(span);
    return span;
  });
  box.appendChild(fragment);

  var current = -1;
  function scrollTo(span) {
    var top = span.offsetTop, bottom = top + span.offsetHeight;
    if (top < box.scrollTop || bottom > box.scrollTop + box.clientHeight) {
      box.scrollTop = top - box.clientHeight / 2;
    }
  }
  function show() {
    var sung = data.sung;
    if (!sung.length || !(audio.duration > 0)) return;
    var frame = Math.min(sung.length - 1, Math.floor(audio.currentTime / audio.duration * sung.length));
    var i = sung[frame] < spans.length ? sung[frame] : -1;
    if (i === current) return;
    if (current >= 0) spans[current].classList.remove("sung");
    current = i;
    if (i >= 0) {
      spans[i].classList.add("sung");
      scrollTo(spans[i]);
    }
  }
  function tick() {
    show();
    if (!audio.paused && !audio.ended) window.requestAnimationFrame(tick);
  }
  audio.addEventListener("play", function () { window.requestAnimationFrame(tick); });
  audio.addEventListener("timeupdate", show);
  audio.addEventListener("seeked", show);
})();
</script>
</body>
</html>
""")


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside ``<script type="application/json">``: no ``</script>``,
    ``<!--`` or entity can appear in it, and ``JSON.parse`` still gives back ``obj``."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def alignment_frames(alignment: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool a ``(T_tokens, n_cols)`` attention matrix into ``n_frames`` equal time slices.

    Returns ``weights (n_frames, n_chars)`` uint8 (attention × 255 on lyric character i, trimmed after
    the last character ever attended) and ``sung (n_frames,)`` int: the most attended character of
    each slice, -1 where that is none (the column before the first character, or no attention at all).
    """
    if alignment.ndim != 2 or alignment.shape[1] == 0 or not 1 <= n_frames <= alignment.shape[0]:
        raise ValueError(f"need a (T_tokens, n_cols) alignment with n_cols > 0 and 1 <= n_frames <= T_tokens, "
                         f"got shape {tuple(alignment.shape)} and n_frames={n_frames}")
    edges = np.linspace(0, alignment.shape[0], n_frames + 1).astype(np.int64)
    pooled = np.add.reduceat(alignment, edges[:-1], axis=0) / np.diff(edges)[:, None]
    sung = np.where(pooled.max(axis=1) > 0, pooled.argmax(axis=1) - _LYRIC_SHIFT, -1)
    attended = np.flatnonzero(alignment.max(axis=0) > 0)
    n_used = attended[-1] + 1 if len(attended) else _LYRIC_SHIFT
    weights = np.round(np.clip(pooled[:, _LYRIC_SHIFT:n_used], 0, 1) * 255).astype(np.uint8)
    return weights, sung.astype(np.int64)


def _alignment_png(alignment: np.ndarray) -> bytes:
    """Picture of the attention, time left to right and the first character at the bottom."""
    attended = np.flatnonzero(alignment.max(axis=0) > 0)
    used = alignment[:, :attended[-1] + 1] if len(attended) else alignment[:, :1]
    pixels = np.ascontiguousarray(np.rot90(np.uint8(np.clip(used, 0, 1) * 255)))
    image = Image.fromarray(pixels).resize(_IMAGE_SIZE, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(wav: np.ndarray, sr: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wav, samplerate=sr, format="WAV")
    return buffer.getvalue()


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _save_item(item_dir: Path, i: int, wav: np.ndarray, sr: int, info: Mapping[str, Any],
               alignment: np.ndarray | None) -> None:
    item_dir.mkdir(parents=True, exist_ok=True)
    artist, genre, lyrics = (_text(info.get(k)) for k in ("artist", "genre", "lyrics"))
    _write_atomic(item_dir / "audio.wav", _wav_bytes(wav, sr))

    sung: list[int] = []
    image = ""
    if alignment is not None:
        n_frames = max(1, alignment.shape[0] // _TOKENS_PER_FRAME)
        weights, sung_frames = alignment_frames(alignment, n_frames)
        sung = sung_frames.tolist()
        record = {"lyrics": lyrics, "sr": sr, "duration_s": len(wav) / sr, "frames": n_frames,
                  "sung": sung, "weights": weights.tolist()}
        _write_atomic(item_dir / "align.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
        _write_atomic(item_dir / "align.png", _alignment_png(alignment))
        image = ('<img id="alignment" src="align.png" '
                 'alt="lyric alignment: time left to right, characters bottom to top">')

    page = _ITEM_PAGE.substitute(
        title=f"Item {i}", style=_STYLE, artist=html.escape(artist), genre=html.escape(genre), image=image,
        data=script_json({"artist": artist, "genre": genre, "lyrics": lyrics, "sung": sung}))
    _write_atomic(item_dir / "index.html", page.encode("utf-8"))


def save_html(logdir: str | os.PathLike, x: torch.Tensor | np.ndarray, zs: Sequence[torch.Tensor] | None,
              labels: Sequence[Mapping[str, Any]] | Mapping[str, Any],
              alignments: Sequence[np.ndarray | torch.Tensor | None] | None, hps: Mapping[str, Any]) -> None:
    """Write the viewer for one level's samples into ``logdir``.

    x: audio ``(N, T, 1)`` (or ``(N, T)``) in [-1, 1]. zs: the codes per level, top level last, used to
    check the alignment length (may be None). labels: N dicts with 'artist', 'genre', 'lyrics' (or the
    original's ``{'info': [...]}``). alignments: None or N arrays ``(T_top_tokens, len(lyrics))`` of
    attention weights (None entries for items without). hps: needs ``sr``.
    """
    logdir = Path(logdir)
    if "sr" not in hps:
        raise ValueError("save_html needs hps.sr (the sample rate of x)")
    sr = int(hps["sr"])
    audio = _to_numpy(x)
    if audio.ndim == 3 and audio.shape[-1] == 1:
        audio = audio[..., 0]
    if audio.ndim != 2:
        raise ValueError(f"x must have shape (N, T, 1) or (N, T), got {tuple(audio.shape)}")
    if isinstance(labels, Mapping):
        if "info" not in labels:
            raise ValueError("labels must be a list of dicts with 'artist', 'genre', 'lyrics' "
                             "or a dict with an 'info' list of them")
        labels = labels["info"]
    n = audio.shape[0]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} audio items")
    if alignments is not None and len(alignments) != n:
        raise ValueError(f"got {len(alignments)} alignments for {n} audio items")
    top_length = int(zs[-1].shape[1]) if zs else None

    logdir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        info = labels[i]
        if not isinstance(info, Mapping):
            raise TypeError(f"labels[{i}] must be a dict with 'artist', 'genre', 'lyrics', got {type(info).__name__}")
        alignment = None if alignments is None or alignments[i] is None else _to_numpy(alignments[i])
        if alignment is not None:
            n_chars = len(_text(info.get("lyrics")))
            if alignment.ndim != 2 or alignment.shape[1] != n_chars:
                raise ValueError(f"alignments[{i}] must have shape (T_tokens, len(lyrics)={n_chars}), "
                                 f"got {tuple(alignment.shape)}")
            if top_length is not None and alignment.shape[0] != top_length:
                raise ValueError(f"alignments[{i}] has {alignment.shape[0]} rows but the top-level codes "
                                 f"have {top_length} tokens")
            if n_chars == 0 or alignment.shape[0] == 0:
                alignment = None  # nothing to align: no lyrics or no time steps
        _save_item(logdir / f"item_{i}", i, audio[i], sr, info, alignment)
        entries.append(_INDEX_ITEM.substitute(
            i=i, artist=html.escape(_text(info.get("artist"))), genre=html.escape(_text(info.get("genre"))),
            lyrics=html.escape(_text(info.get("lyrics")))))

    page = _INDEX_PAGE.substitute(title=html.escape(f"Samples in {logdir.name}"), style=_STYLE,
                                  items="\n".join(entries))
    _write_atomic(logdir / "index.html", page.encode("utf-8"))
