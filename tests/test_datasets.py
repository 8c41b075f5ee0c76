"""Known data sets: local data directories first, then the cache, then a download (tested against a local
HTTP server and a monkeypatched fetch, never the network)."""

from __future__ import annotations

import functools
import http.server
import threading
import urllib.error

import pytest

from earlytag.data import datasets
from earlytag.data.datasets import load_dataset, resolve
from earlytag.errors import DataError

UNER_DEV = "1\tParis\tB-LOC\t-\t-\n2\tis\tO\t-\t-\n\n"


def test_data_dir_wins(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "uner_english_ewt"
    folder.mkdir(parents=True)
    (folder / "en_ewt-ud-dev.iob2").write_text(UNER_DEV)
    monkeypatch.setenv("EARLYTAG_DATA", str(tmp_path / "nowhere"))
    assert resolve("uner-en-ewt:dev", data_dir=tmp_path / "data") == folder / "en_ewt-ud-dev.iob2"


def test_shared_data_normalised_train_file(shared_data):
    assert resolve("uner-en-ewt:train").name == "en_ewt-ud-train.normalized-from-early.iob2"
    assert datasets.default_task("ud-en-ewt:dev") == "pos"


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server laid out like raw.githubusercontent.com."""
    root = tmp_path / "mirror"
    path = root / "UniversalNER" / "UNER_English-EWT" / "master"
    path.mkdir(parents=True)
    (path / "en_ewt-ud-dev.iob2").write_text(UNER_DEV)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_from_mirror_into_cache(mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("EARLYTAG_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EARLYTAG_MIRROR", mirror)
    path = resolve("uner-en-ewt:dev")
    assert path == tmp_path / "cache" / "data" / "uner_english_ewt" / "en_ewt-ud-dev.iob2"
    assert load_dataset("uner-en-ewt:dev", "ner").sentences[0].tags == ["B-LOC", "O"]
    # second time: from the cache, no request
    monkeypatch.setattr(datasets, "fetch_bytes", lambda url: pytest.fail("downloaded twice"))
    assert resolve("uner-en-ewt:dev") == path


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("EARLYTAG_DATA", str(tmp_path / "empty"))
    calls = []

    def broken(url):
        calls.append(url)
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr(datasets, "fetch_bytes", broken)
    with pytest.raises(DataError, match="download failed: connection refused") as info:
        resolve("ud-en-ewt:test")
    message = str(info.value)  # says where it looked, and what to do
    assert message.startswith("ud-en-ewt:test: not found in ")
    assert f"{tmp_path / 'empty'} (no such directory)" in message and "EARLYTAG_DATA" in message
    assert calls == ["https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/master/en_ewt-ud-test.conllu"]
    assert not list((tmp_path / "cache").rglob("*")) or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_offline_refuses_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("EARLYTAG_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(datasets, "fetch_bytes", lambda url: pytest.fail("must not download"))
    with pytest.raises(DataError, match="downloading is off"):
        resolve("uner-zh-gsdsimp:dev")


def test_unknown_names(tmp_path):
    with pytest.raises(DataError, match="not a known data set name"):
        resolve(tmp_path / "nothing.iob2")
    with pytest.raises(DataError, match="has splits"):
        resolve("uner-en-ewt:validation")
