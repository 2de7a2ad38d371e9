"""No code runs from files: every torch.load is weights_only, crafted pickles are refused with a clear message
wherever a file is read (checkpoints, --codes_file, data.pth.tar, progress files), what we write loads with
weights_only=True, and the served viewer binds to localhost only."""
from __future__ import annotations

import ast
import os
import pathlib
import pickle
import re

import pytest
import torch

from conftest import REPO
from helpers.hostile_files import CRAFTS, craft
from jukebox import align, make_models, sample
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.inference.session import ProgressFile
from jukebox.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jukebox.utils.transformers_format import load_transformers_state_dict

VQ = dict(sample_length=64, levels=1, downs_t=(1,), strides_t=(2,), width=8, depth=1, emb_width=8, l_bins=16)
PRIOR = dict(VQ, level=0, n_ctx=8, prior_width=16, prior_depth=1, heads=1, labels=False)


# torch warns that it did not write protocol-5 pickles itself; that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

@pytest.mark.parametrize("how", CRAFTS)
def test_crafted_files_do_run_code_when_loaded_unsafely(tmp_path, how):
    """The files of these tests are real attacks: loading them the unsafe way creates the marker."""
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "evil.pth.tar", marker, how)
    if how.endswith("torch") or how == "touch_zip":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def _restore_vqvae(path, tmp_path):
    make_models.make_vqvae(setup_hparams("", dict(VQ, restore_vqvae=str(path))), "cpu")


def _lazy_prior(path, tmp_path):
    vqvae = make_models.make_vqvae(setup_hparams("", VQ), "cpu")
    make_models.LazyPrior(setup_hparams("", dict(PRIOR, restore_prior=str(path))), vqvae).load("cpu")


def _codes_file(path, tmp_path):
    sample.load_codes(str(path), n_samples=1, levels=1, cut_length=None, priors=[], device=torch.device("cpu"))


def _progress_file(path, tmp_path):
    os.replace(path, tmp_path / "progress.pth.tar")
    ProgressFile(str(tmp_path), {}).read()


def _align_data_file(path, tmp_path):
    (tmp_path / "level_0").mkdir()
    os.replace(path, tmp_path / "level_0" / "data.pth.tar")
    align.run(model="not_even_a_model", logdir=str(tmp_path))


READERS = dict(load_checkpoint=lambda path, tmp_path: load_checkpoint(path), restore_vqvae=_restore_vqvae,
               lazy_prior=_lazy_prior, codes_file=_codes_file, progress_file=_progress_file,
               align_data_file=_align_data_file)


@pytest.mark.parametrize("how", CRAFTS)
@pytest.mark.parametrize("reader", list(READERS))
def test_crafted_pickle_is_refused_with_a_clear_message(tmp_path, reader, how):
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "evil.pth.tar", marker, how)
    with pytest.raises(CheckpointError, match=r"evil\.pth\.tar|progress\.pth\.tar|data\.pth\.tar") as info:
        READERS[reader](path, tmp_path)
    assert re.search(r"refusing to unpickle|not a PyTorch checkpoint that loads safely", str(info.value))
    assert not marker.exists()


def test_the_message_names_the_object_it_refused(tmp_path):
    path = craft(tmp_path / "evil.pth.tar", tmp_path / "pwned", "system_pickle2")
    with pytest.raises(CheckpointError, match=r"contains a Python object \(GLOBAL (posix|os|nt)\.system\)"):
        load_checkpoint(path)


def test_transformers_format_files_are_loaded_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "pytorch_model.bin", marker, "touch_zip")
    with pytest.raises(pickle.UnpicklingError):
        load_transformers_state_dict(str(path))
    assert not marker.exists()


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_torch_load_in_the_package_is_weights_only():
    sources = sorted((REPO / "jukebox").rglob("*.py"))
    found = 0
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for call in _torch_load_calls(tree):
            found += 1
            flags = {kw.arg: kw.value for kw in call.keywords}
            value = flags.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, \
                f"{source.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                assert not (owner in ("pickle", "dill", "marshal") and node.func.attr in ("load", "loads")), \
                    f"{source.relative_to(REPO)}:{node.lineno}: unpickles with {owner}.{node.func.attr}"
                allow_pickle = [kw for kw in node.keywords if kw.arg == "allow_pickle"]
                assert not (owner in ("np", "numpy") and allow_pickle), \
                    f"{source.relative_to(REPO)}:{node.lineno}: numpy load with allow_pickle"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{source.relative_to(REPO)}:{node.lineno}: {node.func.id}"
    assert found >= 3  # the scan does see the package's loads


def _has_only_safe_globals(path: pathlib.Path) -> bool:
    return torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


def test_saved_checkpoints_load_weights_only_without_extra_globals(tmp_path):
    vqvae = make_models.make_vqvae(setup_hparams("", VQ), "cpu")
    hps = setup_hparams("", VQ)
    assert isinstance(hps, Hyperparams)
    path = tmp_path / "checkpoint_latest.pth.tar"
    save_checkpoint(path, dict(hps=hps, model=vqvae.state_dict(), step=3, nested=[dict(a=(1, 2.0, "x"))]))
    assert _has_only_safe_globals(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # no safe_globals context
    assert loaded["step"] == 3 and loaded["hps"]["levels"] == 1 and type(loaded["hps"]) is dict
    assert all(torch.equal(loaded["model"][k], v) for k, v in vqvae.state_dict().items())


def test_progress_files_load_weights_only(tmp_path):
    progress = ProgressFile(str(tmp_path), dict(model="m", n_samples=2))
    alignments = [torch.rand(3, 4)]
    zs = [torch.randint(0, 16, (2, 5)), torch.zeros(2, 0, dtype=torch.long)]
    progress.write(zs, level=1, windows_done=2, seed=11, alignments=alignments)
    assert _has_only_safe_globals(tmp_path / "progress.pth.tar")
    state = torch.load(tmp_path / "progress.pth.tar", map_location="cpu", weights_only=True)
    assert state["windows_done"] == 2 and torch.equal(state["zs"][0], zs[0])
    again = ProgressFile(str(tmp_path), dict(model="m", n_samples=2)).read()
    assert again["seed"] == 11 and torch.equal(again["alignments"][0], alignments[0])


def test_the_viewer_is_served_on_localhost_only():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    texts = {"README.md": readme}
    texts.update({str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in (REPO / "jukebox").rglob("*.py")})
    commands = [(name, m) for name, text in texts.items() for m in re.finditer(r"http\.server[^`\n]*", text)]
    assert any(name == "README.md" for name, _ in commands)
    assert any(name.endswith("sample.py") for name, _ in commands)
    for name, match in commands:
        assert "--bind 127.0.0.1" in match.group(0), f"{name}: `{match.group(0)}` serves on every interface"
