"""atomic_write keeps the old file on failure; leftovers of killed writes are cleaned up."""
import os

import pytest

from jukebox.utils.atomic import atomic_write, remove_stale_temporaries


def test_failed_write_keeps_previous_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint_latest.pth.tar"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth.tar"]


def test_written_file_has_umask_permissions(tmp_path):
    target = tmp_path / "out.json"
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_stale_checkpoint_temporaries_are_removed_at_training_start(tmp_path):
    from jukebox.hparams import Hyperparams
    from jukebox.utils.logger import init_logging

    logdir = tmp_path / "run"
    logdir.mkdir()
    stale = logdir / ".checkpoint_latest.pth.tar.abc123.tmp"
    stale.write_bytes(b"partial")
    unrelated = logdir / ".metrics.jsonl.xyz.tmp"
    unrelated.write_bytes(b"x")
    assert remove_stale_temporaries(logdir, "nothing_*") == []
    logger, _ = init_logging(Hyperparams(name="run", local_logdir=str(tmp_path), argv=""), rank=0)
    logger.close()
    assert not stale.exists() and unrelated.exists()
