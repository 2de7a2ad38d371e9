"""Peak host memory of restoring one part out of a sharded port checkpoint.

    python tests/helpers/restore_part_memory.py write FOLDER MIB [WIDTH]  # the tiny model + MIB of other shards
    python tests/helpers/restore_part_memory.py measure FOLDER [WIDTH]    # restore the level-0 upsampler

``write`` saves the tiny model in the port's layout, its level-0 upsampler (priors.2.*, transformer width
``WIDTH``, default 16) in a shard of its own, and ``MIB`` MiB of another prior's tensors in 256 MiB shards.
``measure`` (run in a fresh process) builds the upsampler with no weights, notes the peak resident memory
(``ru_maxrss``), restores it from FOLDER through ``LazyPrior.load``, reads every weight once and prints one JSON
line: the peak's increase after loading and after reading, the part's size, the shards opened, and whether the
weights are the saved ones.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from helpers.tiny_model import register, save_tiny_checkpoints, unregister
from jukebox import make_models
from jukebox.hparams import HPARAMS_REGISTRY, setup_hparams
from jukebox.utils import port_checkpoint
from jukebox.utils.checkpoint import load_checkpoint
from jukebox.utils.transformers_format import to_transformers_state_dict

PART_SHARD = "pytorch_model-00001-of-00002.bin"
SHARD_MIB = 256


def _register(ours: Path, width: int) -> None:
    register(ours)
    HPARAMS_REGISTRY["tiny_upsampler_0"].prior_width = width


def write(folder: Path, other_mib: int, width: int) -> dict:
    folder.mkdir(parents=True)
    ours = folder / "ours"
    ours.mkdir()
    _register(ours, width)
    save_tiny_checkpoints(ours)
    parts = [load_checkpoint(ours / f"{n}.pth.tar")["model"]
             for n in ("tiny_vqvae", "tiny_upsampler_0", "tiny_upsampler_1", "tiny_lyrics_prior")]
    state = to_transformers_state_dict(parts[0], parts[1:])
    part = {k: v for k, v in state.items() if k.startswith("priors.2.")}
    torch.save(part, folder / PART_SHARD)
    weight_map = dict.fromkeys(part, PART_SHARD)
    n_shards = -(-other_mib // SHARD_MIB)
    for s in range(n_shards):
        name = f"pytorch_model-other-{s:05d}.bin"
        mib = min(SHARD_MIB, other_mib - s * SHARD_MIB)
        tensors = {f"priors.0.prior.filler.{s}.{i}": torch.randn(1 << 18) for i in range(mib)}  # 1 MiB each
        torch.save(tensors, folder / name)
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(dict(weight_map=weight_map)))
    return dict(other_mib=other_mib, part_shard=PART_SHARD)


def measure(folder: Path, width: int) -> dict:
    _register(folder / "ours", width)
    try:
        opened: list[str] = []
        real = port_checkpoint._open_shard
        port_checkpoint._open_shard = lambda path: opened.append(Path(path).name) or real(path)
        vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512)), "cpu")
        lazy = make_models.LazyPrior(setup_hparams("tiny_upsampler_0", dict(restore_prior=str(folder))), vqvae)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        module = lazy.load("cpu")
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for tensor in module.state_dict().values():  # page in every weight, as sampling would
            tensor.float().sum()
        read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        saved = load_checkpoint(folder / "ours" / "tiny_upsampler_0.pth.tar")["model"]
        state = module.state_dict()
        equal = state.keys() == saved.keys() and all(torch.equal(state[k], v) for k, v in saved.items())
        part_mib = sum(v.nbytes for v in saved.values()) / 2**20
        return dict(peak_increase_mib=round((read - before) / 1024, 1),
                    after_load_mib=round((loaded - before) / 1024, 1), part_mib=round(part_mib, 3),
                    shards_opened=opened, restored_equal=equal)
    finally:
        unregister()


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "write":
        print(json.dumps(write(folder, int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 16)))
    else:
        print(json.dumps(measure(folder, int(sys.argv[3]) if len(sys.argv) > 3 else 16)))
