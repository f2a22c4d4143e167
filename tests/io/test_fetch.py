"""Finding a spec's files: local paths, data dir, cache, and downloads from a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsm.config.spec import FileRef, load_region
from lsm.errors import ChecksumError, DataError, SpecError
from lsm.io.fetch import cache_dir, resolve_file

PAYLOAD = b"x,y,label\n1,2,1\n3,4,0\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG = hashlib.sha256(b"something else").hexdigest()
WHERE = "spec.yaml: samples.path"


class Server:
    """A static file server on 127.0.0.1 that counts the GET requests per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hits[self.path] = hits.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    (root / "data").mkdir(parents=True)
    (root / "data" / "table.csv").write_bytes(PAYLOAD)
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("LSM_CACHE", str(d))
    return d


def ref(server: Server, sha: str = SHA, **kw: Any) -> FileRef:
    return FileRef(url=f"{server.url}/data/table.csv", sha256=sha, **kw)


def test_download_into_cache_then_reuse(server: Server, cache: Path, tmp_path: Path) -> None:
    r = ref(server, name="region/table.csv")
    p = resolve_file(r, base_dir=tmp_path, where=WHERE, progress=False)
    assert p == cache / "region" / "table.csv"
    assert p.read_bytes() == PAYLOAD
    assert server.hits == {"/data/table.csv": 1}
    again = resolve_file(r, base_dir=tmp_path, where=WHERE, progress=False)
    assert again == p
    assert server.hits == {"/data/table.csv": 1}  # served from the cache


def test_cache_name_defaults_to_url_basename(server: Server, cache: Path, tmp_path: Path) -> None:
    p = resolve_file(ref(server), base_dir=tmp_path, where=WHERE, progress=False)
    assert p == cache / "table.csv"
    assert cache_dir() == cache


def test_corrupt_cached_file_is_fetched_again(server: Server, cache: Path,
                                              tmp_path: Path) -> None:
    cache.mkdir()
    (cache / "table.csv").write_bytes(b"truncated")
    p = resolve_file(ref(server), base_dir=tmp_path, where=WHERE, progress=False)
    assert p.read_bytes() == PAYLOAD
    assert server.hits == {"/data/table.csv": 1}


def test_wrong_checksum_refused_and_not_kept(server: Server, cache: Path,
                                             tmp_path: Path) -> None:
    with pytest.raises(ChecksumError) as exc:
        resolve_file(ref(server, sha=WRONG), base_dir=tmp_path, where=WHERE, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(WHERE) and "does not match" in msg and WRONG[:12] in msg
    assert server.hits == {"/data/table.csv": 1}
    left = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert left == []


def test_data_dir_file_used_without_download(server: Server, cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ddir = tmp_path / "data"
    (ddir / "region").mkdir(parents=True)
    (ddir / "region" / "table.csv").write_bytes(PAYLOAD)
    monkeypatch.setenv("LSM_DATA_DIR", str(ddir))
    p = resolve_file(ref(server, name="region/table.csv"), base_dir=tmp_path, where=WHERE,
                     progress=False)
    assert p == ddir / "region" / "table.csv"
    assert server.hits == {}
    assert not cache.exists() or not any(cache.rglob("*"))


def test_data_dir_corrupt_file_is_a_checksum_error(server: Server, cache: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ddir = tmp_path / "data"
    ddir.mkdir()
    (ddir / "table.csv").write_bytes(PAYLOAD + b"5,6,1\n")
    monkeypatch.setenv("LSM_DATA_DIR", str(ddir))
    with pytest.raises(ChecksumError) as exc:
        resolve_file(ref(server), base_dir=tmp_path, where=WHERE, progress=False)
    msg = str(exc.value)
    assert str(ddir / "table.csv") in msg and WHERE in msg and SHA[:12] in msg
    assert server.hits == {}


def test_local_copies_honoured(server: Server, cache: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    ddir = tmp_path / "data"
    ddir.mkdir()
    other = b"an equivalent export\n"
    (ddir / "table_export.csv").write_bytes(other)
    monkeypatch.setenv("LSM_DATA_DIR", str(ddir))
    r = ref(server, local_copies=[{"name": "table_export.csv",
                                   "sha256": hashlib.sha256(other).hexdigest()}])
    p = resolve_file(r, base_dir=tmp_path, where=WHERE, progress=False)
    assert p == ddir / "table_export.csv"
    assert server.hits == {}
    bad = ref(server, local_copies=[{"name": "table_export.csv", "sha256": WRONG}])
    with pytest.raises(ChecksumError, match="table_export.csv"):
        resolve_file(bad, base_dir=tmp_path, where=WHERE, progress=False)


def test_data_dir_without_the_file_falls_back_to_download(server: Server, cache: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path))
    p = resolve_file(ref(server, name="nested/t.csv"), base_dir=tmp_path, where=WHERE,
                     progress=False)
    assert p == cache / "nested" / "t.csv"
    assert server.hits == {"/data/table.csv": 1}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_a_one_line_data_error(cache: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = f"http://127.0.0.1:{_closed_port()}/gone.csv"
    with pytest.raises(DataError) as exc:
        resolve_file(FileRef(url=url, sha256=SHA), base_dir=tmp_path, where=WHERE,
                     progress=False)
    msg = str(exc.value)
    assert not isinstance(exc.value, ChecksumError)
    assert "\n" not in msg
    assert msg.startswith(f"{WHERE}: cannot download {url}")
    assert "LSM_DATA_DIR" in msg


def test_http_404_is_a_data_error(server: Server, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot download"):
        resolve_file(FileRef(url=f"{server.url}/nope.csv", sha256=SHA), base_dir=tmp_path,
                     where=WHERE, progress=False)


def test_local_path_relative_to_spec_and_checked(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.csv").write_bytes(PAYLOAD)
    p = resolve_file(FileRef(path="sub/t.csv"), base_dir=tmp_path, where=WHERE)
    assert p == tmp_path / "sub" / "t.csv"
    assert resolve_file(FileRef(path="sub/t.csv", sha256=SHA), base_dir=tmp_path,
                        where=WHERE) == p
    with pytest.raises(ChecksumError):
        resolve_file(FileRef(path="sub/t.csv", sha256=WRONG), base_dir=tmp_path, where=WHERE)
    with pytest.raises(SpecError, match=r"spec.yaml: samples.path: file not found: .*x.csv"):
        resolve_file(FileRef(path="x.csv"), base_dir=tmp_path, where=WHERE)


def test_region_with_url_factor_builds_a_stack(server: Server, cache: Path, tmp_path: Path,
                                               write_tif: Any, write_spec: Any) -> None:
    from lsm.stack.build import build_stack

    dem = np.arange(48, dtype="float32").reshape(6, 8)
    tif = write_tif(server.root / "data" / "dem.tif", dem)
    sha = hashlib.sha256(tif.read_bytes()).hexdigest()
    spec_path = write_spec(tmp_path / "remote.yaml", {
        "name": "remote",
        "factors": {"elevation": {"path": {"url": f"{server.url}/data/dem.tif", "sha256": sha,
                                           "name": "remote/dem.tif"}}},
        "inventory": {"path": "inv.gpkg"},
    })
    ds = build_stack(load_region(spec_path), progress=False)
    np.testing.assert_array_equal(ds.elevation.values, dem)
    assert ds.elevation.attrs["source"] == "dem.tif"
    assert (cache / "remote" / "dem.tif").is_file()
    assert server.hits == {"/data/dem.tif": 1}


def test_fetch_never_writes_or_deletes_outside_the_cache(server: Server, cache: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A name that leaves the cache (built around the spec checks) is refused, files kept."""
    victim = tmp_path / "victim" / "important.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    cache.mkdir()
    evil = FileRef.model_construct(url=f"{server.url}/data/table.csv", sha256=SHA,
                                   name="../victim/important.txt", path=None, local_copies=[])
    with pytest.raises(SpecError, match="name: '../victim/important.txt'"):
        resolve_file(evil, base_dir=tmp_path, where=WHERE, progress=False)
    monkeypatch.setenv("LSM_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SpecError, match="inside the folder"):
        resolve_file(evil, base_dir=tmp_path, where=WHERE, progress=False)
    assert victim.read_bytes() == b"precious"
    assert server.hits == {}


def test_failed_download_keeps_the_file_already_there(cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cache.mkdir()
    (cache / "gone.csv").write_bytes(b"an older version")
    url = f"http://127.0.0.1:{_closed_port()}/gone.csv"
    with pytest.raises(DataError, match="cannot download"):
        resolve_file(FileRef(url=url, sha256=SHA), base_dir=tmp_path, where=WHERE,
                     progress=False)
    assert (cache / "gone.csv").read_bytes() == b"an older version"
