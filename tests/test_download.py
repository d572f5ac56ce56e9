"""Downloads against a local HTTP server: normal, resumed, checksum, 404, timeout, extraction."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from spared_utils import download
from spared_utils.download import ArchiveError, ChecksumError, DownloadError, fetch
from tests.fixtures_http import http_server  # noqa: F401  (pytest fixture)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 2, "backoff": 0.0, "timeout": (2.0, 2.0), "progressbar": False}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_normal_download_is_verified_and_cached(http_server, tmp_path):
    url = http_server.add("/data.bin", PAYLOAD)
    out = fetch(url, "sub/data.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)
    assert out == tmp_path / "sub" / "data.bin"
    assert out.read_bytes() == PAYLOAD
    assert files_under(tmp_path) == [out]  # no temporary file left beside it
    fetch(url, "sub/data.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)  # second call: from cache
    assert len(http_server.requests_for("/data.bin")) == 1


def test_cache_dir_comes_from_environment(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_CACHE_DIR", str(tmp_path / "envcache"))
    url = http_server.add("/e.bin", b"hello")
    out = fetch(url, "e.bin", **FAST)
    assert out == tmp_path / "envcache" / "e.bin" and out.read_bytes() == b"hello"


def test_interrupted_transfer_resumes_with_range(http_server, tmp_path):
    url = http_server.add("/big.bin", PAYLOAD, behaviour="drop", drop_after=30_000, drops=2)
    out = fetch(url, "big.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)
    assert out.read_bytes() == PAYLOAD
    ranges = [r["range"] for r in http_server.requests_for("/big.bin")]
    # first request from zero, then two resumptions, each from where the previous one stopped
    assert ranges == [None, "bytes=30000-", "bytes=60000-"]
    assert [r["status"] for r in http_server.requests_for("/big.bin")] == [200, 206, 206]


def test_server_without_range_support_restarts_from_zero(http_server, tmp_path):
    url = http_server.add("/nr.bin", PAYLOAD, behaviour="no_range")
    downloader = download.ResumableDownloader(retries=1, backoff=0, progressbar=False)
    part = tmp_path / "part.bin"
    part.write_bytes(PAYLOAD[:500])  # a stale partial file: must be overwritten, not appended to
    downloader(url, part)
    assert part.read_bytes() == PAYLOAD


def test_too_many_interruptions_fail_and_leave_nothing(http_server, tmp_path):
    url = http_server.add("/flaky.bin", PAYLOAD, behaviour="drop", drop_after=1000, drops=10)
    with pytest.raises(DownloadError) as err:
        fetch(url, "flaky.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)
    assert url in str(err.value) and str(tmp_path / "flaky.bin") in str(err.value)
    assert len(http_server.requests_for("/flaky.bin")) == FAST["retries"] + 1  # bounded
    assert files_under(tmp_path) == []


def test_wrong_checksum_raises_and_keeps_nothing(http_server, tmp_path):
    url = http_server.add("/bad.bin", PAYLOAD)
    with pytest.raises(ChecksumError) as err:
        fetch(url, "bad.bin", "0" * 64, cache_dir=tmp_path, **FAST)
    assert "0" * 64 in str(err.value) and str(tmp_path / "bad.bin") in str(err.value)
    assert files_under(tmp_path) == []


def test_404_names_url_and_manual_path_without_retrying(http_server, tmp_path):
    url = http_server.url("/missing.zip")
    with pytest.raises(DownloadError) as err:
        fetch(url, "x/missing.zip", cache_dir=tmp_path, **FAST)
    message = str(err.value)
    assert "HTTP 404" in message and url in message
    assert str(tmp_path / "x" / "missing.zip") in message and "place it at" in message
    assert len(http_server.requests_for("/missing.zip")) == 1  # 404 is not retried
    assert files_under(tmp_path) == []


def test_server_error_is_retried_then_reported(http_server, tmp_path):
    url = http_server.add("/down.bin", behaviour="status", status=503)
    with pytest.raises(DownloadError, match="HTTP 503"):
        fetch(url, "down.bin", cache_dir=tmp_path, **FAST)
    assert len(http_server.requests_for("/down.bin")) == FAST["retries"] + 1


def test_slow_server_times_out(http_server, tmp_path):
    url = http_server.add("/slow.bin", PAYLOAD, behaviour="slow", delay=1.5)
    options = dict(FAST, timeout=(1.0, 0.3), retries=1)
    with pytest.raises(DownloadError) as err:
        fetch(url, "slow.bin", PAYLOAD_SHA, cache_dir=tmp_path, **options)
    assert "Timeout" in str(err.value) or "timed out" in str(err.value)
    assert files_under(tmp_path) == []


def test_unreachable_host_and_manual_placement(tmp_path):
    url = "http://127.0.0.1:9/nothing-listens-here.bin"  # discard port: connection refused
    with pytest.raises(DownloadError) as err:
        fetch(url, "manual/file.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)
    target = tmp_path / "manual" / "file.bin"
    assert str(target) in str(err.value) and PAYLOAD_SHA in str(err.value)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(PAYLOAD)  # the user follows the instructions ...
    assert fetch(url, "manual/file.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST) == target  # ... offline


def test_mirrors_are_tried_in_order(http_server, tmp_path):
    dead = http_server.url("/dead.bin")
    alive = http_server.add("/alive.bin", PAYLOAD)
    out = fetch([dead, alive], "m.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert len(http_server.requests_for("/dead.bin")) == 1


def test_mirror_prefix_is_asked_first_for_the_cache_path(http_server, tmp_path, monkeypatch):
    data = b"mirrored bytes"
    http_server.add("/copy/geo/GSE1%20x/a%23b.bin", data)
    published = "http://127.0.0.1:9/a.bin"  # unreachable: only the mirror can answer
    monkeypatch.setenv(download.MIRROR_ENV, http_server.url("/copy/"))
    assert download.mirrored([published], "geo/GSE1 x/a#b.bin") == [
        http_server.url("/copy/geo/GSE1%20x/a%23b.bin"), published]
    out = fetch(published, "geo/GSE1 x/a#b.bin", hashlib.sha256(data).hexdigest(), cache_dir=tmp_path,
                progressbar=False)
    assert out.read_bytes() == data
    monkeypatch.setenv(download.MIRROR_ENV, "")
    assert download.mirrored([published], "a.bin") == [published]
    with pytest.raises(ValueError, match="SPARED_MIRROR='ftp://x' is not an http"):
        download.mirrored([published], "a.bin", mirror="ftp://x")


def test_stale_file_with_wrong_checksum_is_replaced(http_server, tmp_path):
    url = http_server.add("/s.bin", PAYLOAD)
    (tmp_path / "s.bin").write_bytes(b"old content")
    assert fetch(url, "s.bin", PAYLOAD_SHA, cache_dir=tmp_path, **FAST).read_bytes() == PAYLOAD


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _targz_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_zip_download_is_extracted(http_server, tmp_path):
    data = _zip_bytes({"top/a.txt": b"A", "top/sub/b.txt": b"BB"})
    url = http_server.add("/arch.zip", data)
    folder = fetch(url, "arch.zip", hashlib.sha256(data).hexdigest(), cache_dir=tmp_path, extract="zip", **FAST)
    assert folder == tmp_path / "arch"
    assert (folder / "top" / "a.txt").read_bytes() == b"A"
    assert (folder / "top" / "sub" / "b.txt").read_bytes() == b"BB"


def test_targz_download_is_extracted(http_server, tmp_path):
    data = _targz_bytes({"spatial/scalefactors_json.json": b"{}", "spatial/x.csv": b"1,2"})
    url = http_server.add("/spatial.tar.gz", data)
    folder = fetch(url, "s/spatial.tar.gz", cache_dir=tmp_path, extract="tar.gz", **FAST)
    assert folder == tmp_path / "s" / "spatial"
    assert (folder / "spatial" / "x.csv").read_bytes() == b"1,2"


def test_truncated_archive_gives_clear_error_and_no_partial_folder(tmp_path):
    data = _targz_bytes({"a.bin": os.urandom(50_000)})
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated") as err:
        download.extract_archive(archive)
    assert str(archive) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tar.gz"]


def test_corrupt_zip_gives_clear_error(tmp_path):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(ArchiveError, match="bad.zip"):
        download.extract_archive(archive)
    assert not (tmp_path / "bad").exists()


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(ArchiveError, match="outside"):
        download.extract_archive(archive)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_extraction_is_done_once(tmp_path):
    archive = tmp_path / "once.zip"
    archive.write_bytes(_zip_bytes({"f.txt": b"1"}))
    folder = download.extract_archive(archive)
    (folder / "f.txt").write_bytes(b"edited")
    assert download.extract_archive(archive) == folder
    assert (folder / "f.txt").read_bytes() == b"edited"  # not extracted again
    download.extract_archive(archive, force=True)
    assert (folder / "f.txt").read_bytes() == b"1"


# ------------------------------------------------------------------------------------------------
# End to end: a registry entry whose archive is served locally, downloaded, extracted and read
# ------------------------------------------------------------------------------------------------


def _remote_registry(url: str, sha: str | None) -> str:
    return f"""\
schema_version: 1
defaults: {{hex_geometry: true, in_paper: false, pipeline_ready: true}}
publications:
  me: {{citation: "test"}}
datasets:
  toy_remote:
    publication: me
    organism: synthetic
    tissue: test
    n_genes: 8
    combat_key: slide_id
    splits: {{train: [SYN_A1, SYN_B1], val: [SYN_C1], test: [SYN_D1]}}
    patients: {{P1: [SYN_A1, SYN_B1], P2: [SYN_C1, SYN_D1]}}
    source:
      kind: remote
      format: spaceranger
      files:
        - path: toy/toy.zip
          urls: [{url}]
          sha256: {sha or 'null'}
          extract: zip
      nested: ["toy/toy/**/spaceranger_output/*.tar.gz"]
      layout:
        slide_dir: "toy/toy/**/slides/{{slide_id}}"
        fullres: image.tif
"""


def test_load_downloads_extracts_and_reads_a_remote_dataset(http_server, tmp_path, tiny_adata, monkeypatch):
    from spared_utils import datasets, registry, synthetic

    slides = synthetic.write_spaceranger(tiny_adata, tmp_path / "build" / "slides")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        tf.add(slides, arcname="slides")
    archive = _zip_bytes({"Top folder/spaceranger_output/slides.tar.gz": inner.getvalue()})
    url = http_server.add("/toy.zip", archive, behaviour="drop", drop_after=len(archive) // 3)
    registry_file = tmp_path / "datasets.yml"
    registry_file.write_text(_remote_registry(url, hashlib.sha256(archive).hexdigest()))
    monkeypatch.setattr(registry, "registry_path", lambda: registry_file)

    cache = tmp_path / "cache"
    adata = datasets.load("toy_remote", stage="raw", cache_dir=cache, progress=False)
    assert [r["range"] for r in http_server.requests_for("/toy.zip")] == [None, f"bytes={len(archive) // 3}-"]
    # zip → toy/toy/, then the nested slides.tar.gz → .../spaceranger_output/slides/ (holding slides/)
    assert (cache / "toy" / "toy" / "Top folder" / "spaceranger_output" / "slides" / "slides" / "SYN_B1").is_dir()
    assert list(adata.obs_names) == list(tiny_adata.obs_names)
    assert (adata.layers["counts"] != tiny_adata.layers["counts"]).nnz == 0
    assert list(adata.obs["split"].cat.categories) == ["train", "val", "test"]
    assert adata.uns["spatial"]["SYN_D1"]["metadata"]["source_image_path"].endswith("SYN_D1/image.tif")
    datasets.load("toy_remote", stage="raw", cache_dir=cache, progress=False)
    assert len(http_server.requests_for("/toy.zip")) == 2  # second load: nothing downloaded


def test_load_offline_names_url_and_path(tmp_path, monkeypatch):
    from spared_utils import datasets, registry

    monkeypatch.setattr(download, "DEFAULT_BACKOFF", 0.0)
    registry_file = tmp_path / "datasets.yml"
    registry_file.write_text(_remote_registry("http://127.0.0.1:9/toy.zip", None))
    monkeypatch.setattr(registry, "registry_path", lambda: registry_file)
    with pytest.raises(DownloadError) as err:
        datasets.load("toy_remote", stage="raw", cache_dir=tmp_path / "c", progress=False)
    assert "http://127.0.0.1:9/toy.zip" in str(err.value)
    assert str(tmp_path / "c" / "toy" / "toy.zip") in str(err.value)
    assert files_under(tmp_path / "c") == []
