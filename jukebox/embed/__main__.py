"""JukeMIR representations of audio files (command line).

    python -m jukebox.embed --model=5b --layers=36 --audio=FILE_OR_DIR --out=DIR [--pool=mean|max|none]
        [--frame_rate=HZ] [--windows=first|all] [--batch_size=N] [--bf16] [--workers=N] [--ids_dir=DIR]
        [--weights_source=openai|hf]

Each input file gets ``DIR/<relative path>.npy``: ``(n_layers, width)`` pooled, or ``(n_layers, frames, width)``
with ``--pool=none``; ``DIR/manifest.json`` records the settings, the versions and each file's windows and valid
frames. A rerun skips the files done; under ``mpiexec -n R`` or ``torchrun`` the ranks split the files. Files that
cannot be decoded are skipped, listed in ``DIR/report.json`` and in the summary, and make the exit status 1.
"""
from __future__ import annotations

from typing import Any

from jukebox.embed.dataset import REPORT, embed_dataset, find_inputs
from jukebox.embed.embedder import Embedder
from jukebox.utils.cli import fire_command
from jukebox.utils.dist_utils import get_rank, get_world_size, print_once, setup_dist_from_mpi


def run(audio: str, out: str, model: str = "5b", layers: Any = 36, pool: str = "mean", frame_rate: float | None = None,
        windows: str = "first", batch_size: int = 1, bf16: bool = False, workers: int = 2, ids_dir: str | None = None,
        weights_source: str | None = None, port: int = 29500) -> None:
    """Embed ``audio`` (a file or a folder) into ``out`` (see the module docstring)."""
    find_inputs(audio)
    rank, _, device = setup_dist_from_mpi(port=port)
    embedder = Embedder(model, layers, pool=pool, windows=windows, frame_rate=frame_rate, batch_size=batch_size,
                        device=device, bf16=bf16, ids_dir=ids_dir, weights_source=weights_source)
    print_once(f"{model}: layers {','.join(map(str, embedder.layers))} of {embedder.model.depth} built, "
               f"{embedder.precision} on {device}, pool={pool}, windows={windows}")
    summary = embed_dataset(embedder, audio, out, workers=int(workers), rank=rank, world_size=get_world_size(),
                            progress=get_rank() == 0)
    rate = summary.audio_seconds / summary.seconds if summary.seconds else 0.0
    print_once(f"embedded {summary.embedded} files ({summary.audio_seconds:.1f} s of audio in {summary.seconds:.1f} s, "
               f"{rate:.2f} s of audio per second); {summary.skipped} already done; features in {out}")
    if summary.failed:
        print_once(f"{len(summary.failed)} files could not be read and were skipped (listed in {out}/{REPORT}):")
        for file, reason in summary.failed:
            print_once(f"  {file}: {reason}")
        raise SystemExit(1)


if __name__ == "__main__":
    fire_command(run, prog="python -m jukebox.embed")
