"""Weights in the transformers port's layout, from a local folder or a fake Hugging Face hub on 127.0.0.1:
one part read at a time, sources tried in order, resumed transfers, damaged shards refused, label tables of the
hub's layout, and the download command. Nothing here touches the internet."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import DATA, HELPERS, IDS_DIR, env_importing
from helpers.tiny_model import tiny_model
from jukebox import download, make_models, sample
from jukebox.data.artist_genre_processor import ArtistGenreProcessor
from jukebox.hparams import HPARAMS_REGISTRY, setup_hparams
from jukebox.utils import port_checkpoint, remote, sources
from jukebox.utils.checkpoint import CheckpointError, load_checkpoint
from jukebox.utils.remote import DownloadError
from jukebox.utils.transformers_format import to_transformers_state_dict

REPO = "openai/jukebox-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# shard of each part: the VQ-VAE with the level-0 upsampler, the level-1 upsampler alone, the top prior alone
SHARDS = {"vqvae.": 1, "priors.2.": 1, "priors.1.": 2, "priors.0.": 3}


def _shard_name(k: int) -> str:
    return f"pytorch_model-{k:05d}-of-00003.bin"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's checkpoints (registered as MODELS['tiny_test']) and the same weights as a 3-shard port
    folder with the hub's label tables."""
    root = tmp_path_factory.mktemp("tiny_hub")
    (root / "ours").mkdir()
    with tiny_model(root / "ours"):
        parts = [load_checkpoint(root / "ours" / f"{n}.pth.tar")["model"]
                 for n in ("tiny_vqvae", "tiny_upsampler_0", "tiny_upsampler_1", "tiny_lyrics_prior")]
        state = to_transformers_state_dict(parts[0], parts[1:])
        folder = root / "port"
        folder.mkdir()
        weight_map = {k: _shard_name(next(s for p, s in SHARDS.items() if k.startswith(p))) for k in state}
        for k in range(1, 4):
            torch.save({key: v for key, v in state.items() if weight_map[key] == _shard_name(k)},
                       folder / _shard_name(k))
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
            dict(metadata=dict(total_size=sum(v.nbytes for v in state.values())), weight_map=weight_map)))
        (folder / "config.json").write_text(json.dumps(dict(model_type="jukebox")))
        for name in ("artists.json", "genres.json"):
            (folder / name).write_bytes((DATA / "hub_ids" / name).read_bytes())
        yield dict(folder=folder, parts=parts, ours=root / "ours")


class _Hub(BaseHTTPRequestHandler):
    """``{endpoint}/{repo}/resolve/{revision}/{file}`` of the files in ``server.files`` (repo -> name -> bytes)
    and plain files at ``server.plain`` (path -> bytes),
    answering HEAD with the headers huggingface_hub reads; ``server.cut[name]`` closes the first GET of that
    file after so many bytes. Other repos and files are 404."""

    def log_message(self, *args) -> None:
        pass

    def _lookup(self) -> bytes | None:
        m = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path)
        return self.server.plain.get(self.path) if m is None else self.server.files.get(m[1], {}).get(m[3])

    def _headers(self, data: bytes, status: int, body_len: int) -> None:
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(body_len))
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path, None))
        data = self._lookup()
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(data, 200, len(data))
        self.end_headers()

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, self.headers.get("Range")))
        data = self._lookup()
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        self._headers(data, 206 if start else 200, len(data) - start)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        name = self.path.rsplit("/", 1)[1]
        cut = self.server.cut.pop(name, None)
        self.wfile.write(data[start:] if cut is None else data[start:start + cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def hub(tiny, tmp_path, monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    httpd.daemon_threads = True
    httpd.files = {REPO: {p.name: p.read_bytes() for p in tiny["folder"].iterdir()}}
    httpd.requests, httpd.cut, httpd.plain = [], {}, {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", httpd.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("JUKEBOX_CACHE", str(tmp_path / "cache"))
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def registered(tiny, monkeypatch):
    """The tiny model registered as a released model whose parts are also in hub repo REPO."""
    from helpers.tiny_model import register, unregister

    register(tiny["ours"])
    monkeypatch.setitem(sources.HUB_REPOS, "tiny_test", REPO)
    yield
    unregister()


def _opened(monkeypatch) -> list[str]:
    """The shard files opened from now on, by name."""
    seen: list[str] = []
    real = port_checkpoint._open_shard

    def spy(path: Path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(port_checkpoint, "_open_shard", spy)
    return seen


def _assert_equal(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key].float(), value.float()), key


def test_each_part_opens_only_its_own_shards(tiny, registered, monkeypatch):
    opened = _opened(monkeypatch)
    folder = str(tiny["folder"])
    vq_hps = setup_hparams("tiny_vqvae", dict(sample_length=512, restore_vqvae=folder))
    vqvae = make_models.make_vqvae(vq_hps, "cpu")
    _assert_equal(vqvae.state_dict(), tiny["parts"][0])
    assert opened == [_shard_name(1)]

    opened.clear()
    lazy = make_models.LazyPrior(setup_hparams("tiny_upsampler_1", dict(restore_prior=folder)), vqvae)
    _assert_equal(lazy.load("cpu").state_dict(), tiny["parts"][2])
    assert opened == [_shard_name(2)]


def _helper(*args: str) -> dict:
    env = env_importing(HELPERS.parents[1], HELPERS.parent)
    out = subprocess.run([sys.executable, str(HELPERS / "restore_part_memory.py"), *args], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_restoring_a_part_stays_within_its_own_size(tmp_path):
    """A fresh process restores the tiny level-0 upsampler from a folder whose other shards hold 192 MiB: its
    peak memory grows by far less than those (merging every shard would add all of them)."""
    written = _helper("write", str(tmp_path / "port"), "192")
    result = _helper("measure", str(tmp_path / "port"))
    assert written["other_mib"] >= 192 and result["restored_equal"], result
    assert result["shards_opened"] == [written["part_shard"]]
    assert result["peak_increase_mib"] < 40, result


def test_hub_reference_fetches_only_the_parts_shards(tiny, hub, registered):
    vq_hps = setup_hparams("tiny_vqvae", dict(sample_length=512, restore_vqvae=f"hf://{REPO}"))
    vqvae = make_models.make_vqvae(vq_hps, "cpu")
    _assert_equal(vqvae.state_dict(), tiny["parts"][0])
    fetched = {path.rsplit("/", 1)[1] for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {"pytorch_model.bin.index.json", _shard_name(1)}


def test_cut_transfer_resumes_where_it_stopped(tiny, hub, registered, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # what arrived before the cut is on disk
    hub.cut[_shard_name(3)] = 10_240
    lazy = make_models.LazyPrior(setup_hparams("tiny_lyrics_prior", dict(restore_prior=f"hf://{REPO}@main")),
                                 make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512)), "cpu"))
    _assert_equal(lazy.load("cpu").state_dict(), tiny["parts"][3])
    gets = [(path, rng) for method, path, rng in hub.requests if method == "GET" and path.endswith(_shard_name(3))]
    assert [rng for _, rng in gets] == [None, "bytes=10240-"]


def test_truncated_shard_is_named_and_never_loaded(tiny, tmp_path, registered):
    folder = tmp_path / "port"
    folder.mkdir()
    for p in tiny["folder"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    shard = folder / _shard_name(2)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512, restore_vqvae=str(folder))),
                                   "cpu")  # its shard is intact
    lazy = make_models.LazyPrior(setup_hparams("tiny_upsampler_1", dict(restore_prior=str(folder))), vqvae)
    with pytest.raises(CheckpointError, match=rf"shard .*{_shard_name(2)} is truncated or corrupt.*download it again"):
        lazy.load("cpu")
    assert not lazy.loaded and all(p.is_meta for p in lazy.module.parameters())


def test_checkpoint_of_another_model_names_the_mismatch(tiny, registered):
    vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512)), "cpu")
    hps = setup_hparams("tiny_upsampler_0", dict(restore_prior=str(tiny["folder"]), prior_width=32))
    with pytest.raises(CheckpointError, match=r"not one of this model: for the level-0 prior \(priors\.2\.\*\), "
                                              r"priors\.2\..* is \(.*16.*\) there but \(.*32.*\) here"):
        make_models.make_prior(hps, vqvae, "cpu")


def test_released_sources_are_tried_in_order(tiny, hub, registered, monkeypatch, capsys):
    dead = [hub.url + "/blob/jukebox/tiny/prior.pth.tar", hub.url + "/cdn/jukebox/tiny/prior.pth.tar"]
    monkeypatch.setattr(remote, "mirror_urls", lambda url: dead)
    HPARAMS_REGISTRY["tiny_upsampler_1"].restore_prior = "https://openaipublic.azureedge.net/jukebox/tiny/p1.pth.tar"
    _, priors = make_models.make_model("tiny_test", "cpu", setup_hparams("", dict(sample_length=512)), levels=[1])
    _assert_equal(priors[0].load("cpu").state_dict(), tiny["parts"][2])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("weights:")]
    assert lines == [f"weights: {dead[0]} failed: HTTP 404 Not Found; trying {dead[1]}",
                     f"weights: {dead[1]} failed: HTTP 404 Not Found; trying hf://{REPO}"]

    hub.requests.clear()  # the hub cache now holds the part: nothing is asked again
    _, priors = make_models.make_model("tiny_test", "cpu", setup_hparams("", dict(sample_length=512)), levels=[1])
    priors[0].load("cpu")
    assert [r for r in hub.requests if "/resolve/" in r[1] or "/blob/" in r[1] or "/cdn/" in r[1]] == []

    with pytest.raises(DownloadError, match="every source failed"):
        make_models.make_model("tiny_test", "cpu", setup_hparams("", dict(sample_length=512)), levels=[1],
                               weights_source="openai")[1][0].load("cpu")


def test_model_argument_takes_hub_repos_and_folders(tiny, registered):
    assert make_models.resolve_model(f"hf://{REPO}@v1") == ("tiny_test", f"hf://{REPO}@v1")
    assert make_models.resolve_model(str(tiny["folder"])) == ("tiny_test", str(tiny["folder"]))
    with pytest.raises(ValueError, match="known for jukebox-1b-lyrics, jukebox-5b-lyrics"):
        make_models.resolve_model("hf://someone/my-model")
    with pytest.raises(ValueError, match="has no repository on the Hugging Face hub"):
        make_models.make_model("5b", "meta", setup_hparams("", dict(sample_length=1)), weights_source="hf")


def test_hub_tables_give_the_original_tables_ids(tiny, hub, registered):
    for v3 in (False, True):
        original = ArtistGenreProcessor(v3, IDS_DIR)
        for hub_layout in (ArtistGenreProcessor(v3, DATA / "hub_ids"), ArtistGenreProcessor(v3, f"hf://{REPO}")):
            assert hub_layout.artist_ids == original.artist_ids and hub_layout.genre_ids == original.genre_ids
            assert hub_layout.get_artist_id("Nina Simone") == original.get_artist_id("Nina Simone") == 4
            assert hub_layout.get_genre_ids("Folk Rock") == original.get_genre_ids("Folk Rock")
    lazy = make_models.make_model(f"hf://{REPO}", "cpu", setup_hparams("", dict(sample_length=512)), levels=[2])[1][0]
    assert lazy.labeller.ag_processor.artist_id_file.name == "artists.json"


def test_labels_fall_back_to_the_hub_tables_when_the_released_ones_cannot_be_had(tiny, hub, registered,
                                                                                   monkeypatch, capsys):
    monkeypatch.delenv("JUKEBOX_IDS_DIR", raising=False)  # the released tables: not cached, and not on their server
    monkeypatch.setenv("JUKEBOX_IDS_URL", hub.url + "/ids/")
    with pytest.raises(FileNotFoundError, match="Downloading them failed"):
        ArtistGenreProcessor(True)
    assert ArtistGenreProcessor(True, hub_repo=REPO).artist_id_file.name == "artists.json"
    out = capsys.readouterr().out
    assert "labels: the original's artist/genre tables failed: " in out and f"trying hf://{REPO}" in out
    # A released model's prior falls back to its hub repository unless the weights' source excludes the hub.
    hps = setup_hparams("", dict(sample_length=512))
    lazy = make_models.make_model("tiny_test", "cpu", hps, levels=[2])[1][0]
    assert lazy.labeller.ag_processor.artist_id_file.name == "artists.json"
    lazy = make_models.make_model("tiny_test", "cpu", hps, levels=[2], weights_source="openai")[1][0]
    with pytest.raises(FileNotFoundError, match="artist id table not found"):
        _ = lazy.labeller


def test_download_command_fetches_checks_and_lists(tiny, hub, registered, capsys, monkeypatch):
    download.run(model=f"hf://{REPO}")
    out = capsys.readouterr().out
    for k in (1, 2, 3):
        assert re.search(rf"{_shard_name(k)}  .* ok \(size, sha256\)", out), out
    assert "artists.json" in out and f"hf://{REPO}: everything is here" in out
    for name in ("tiny_vqvae", "tiny_upsampler_0", "tiny_upsampler_1", "tiny_lyrics_prior"):
        hub.plain[f"/jukebox/{name}.pth.tar"] = (tiny["ours"] / f"{name}.pth.tar").read_bytes()
        key = "restore_vqvae" if name == "tiny_vqvae" else "restore_prior"
        HPARAMS_REGISTRY[name][key] = f"{hub.url}/jukebox/{name}.pth.tar"
    for table in IDS_DIR.iterdir():  # the original's tables, from $JUKEBOX_IDS_URL
        hub.plain[f"/ids/{table.name}"] = table.read_bytes()
    monkeypatch.setenv("JUKEBOX_IDS_URL", hub.url + "/ids/")
    monkeypatch.delenv("JUKEBOX_IDS_DIR", raising=False)
    download.run(model="tiny_test", source="openai")
    out = capsys.readouterr().out
    assert len(re.findall(r"cache/127\.0\.0\.1_\d+/jukebox/tiny_.*ok \(complete archive\)", out)) == 4, out
    assert len(re.findall(r"labels .*cache/ids/v[23]_(artist|genre)_ids\.txt", out)) == 4, out

    download.run(list=True)
    out = capsys.readouterr().out
    assert REPO in out and _shard_name(3) in out and "tiny_lyrics_prior.pth.tar" in out



def test_bad_weights_source_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        download.main(["--model=1b_lyrics", "--source=nope"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: unknown weights source 'nope': use openai or hf (or leave it out to "
                                       "try the cache, OpenAI's storage, then the Hugging Face hub)\n")
    with pytest.raises(ValueError, match="unknown weights source 'nope'"):
        sample.main(["--model=1b_lyrics", "--name=unused", "--weights_source=nope"])


def _safetensors_folder(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Write ``state`` to ``folder`` as a 3-shard safetensors port checkpoint (shards as in ``SHARDS``); returns the
    shard file of each part prefix."""
    from safetensors.torch import save_file

    folder.mkdir()
    names = {p: f"model-{k:05d}-of-00003.safetensors" for p, k in SHARDS.items()}
    weight_map = {key: next(n for p, n in names.items() if key.startswith(p)) for key in state}
    for name in set(names.values()):
        save_file({k: v.clone().contiguous() for k, v in state.items() if weight_map[k] == name}, folder / name)
    (folder / "model.safetensors.index.json").write_text(json.dumps(dict(weight_map=weight_map)))
    return names


def test_safetensors_shards_are_read_lazily_and_checked(tiny, tmp_path, registered, monkeypatch):
    folder = tmp_path / "st"
    names = _safetensors_folder(folder, to_transformers_state_dict(tiny["parts"][0], tiny["parts"][1:]))
    opened = _opened(monkeypatch)
    vqvae = make_models.make_vqvae(setup_hparams("tiny_vqvae", dict(sample_length=512, restore_vqvae=str(folder))),
                                   "cpu")
    _assert_equal(vqvae.state_dict(), tiny["parts"][0])
    assert opened == [names["vqvae."]]

    shard = folder / names["priors.1."]
    shard.write_bytes(shard.read_bytes()[:-100])
    lazy = make_models.LazyPrior(setup_hparams("tiny_upsampler_1", dict(restore_prior=str(folder))), vqvae)
    with pytest.raises(CheckpointError, match=rf"shard .*{names['priors.1.']} is truncated or corrupt"):
        lazy.load("cpu")


def test_a_folder_is_recognised_by_its_tensor_shapes_alone(tiny, tmp_path, registered, monkeypatch):
    state = to_transformers_state_dict(tiny["parts"][0], tiny["parts"][1:])
    _safetensors_folder(tmp_path / "fits", state)
    key = next(k for k in state if k.startswith("priors.0.") and state[k].dim() == 2)  # of the top prior
    _safetensors_folder(tmp_path / "misfits", {**state, key: state[key][:, :-1]})
    shutil.copytree(tiny["folder"], tmp_path / "bin")

    def no_reading(self, key: str):
        raise AssertionError(f"{key} was read to recognise its folder")

    monkeypatch.setattr(port_checkpoint.PortCheckpoint, "__getitem__", no_reading)
    for name in ("fits", "bin"):
        assert make_models.resolve_model(str(tmp_path / name)) == ("tiny_test", str(tmp_path / name))
    with pytest.raises(CheckpointError, match="misfits fits none of the models"):
        make_models.resolve_model(str(tmp_path / "misfits"))
