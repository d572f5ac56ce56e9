"""Downloads into the cache: checksums, retries, resumption, progress bars, archive extraction.

Built on :mod:`pooch` (which downloads to a temporary file in the cache folder, checks the
checksum, and only then moves the file to its final name) with a downloader of our own that adds
what pooch's default lacks:

* **resumption** – when a transfer breaks, the next attempt asks only for the missing bytes
  (HTTP ``Range``); a server that ignores ``Range`` is detected and the file restarts from zero;
* **retries** with a growing pause for network errors and HTTP 5xx/408/429 (never for 404);
* **timeouts** (connect, read) so that a stalled server cannot hang a notebook;
* a **tqdm progress bar** in bytes.

Nothing half-written stays in the cache: a failed download leaves no file behind (the partial
data lives in pooch's temporary file, which pooch removes), and archives are extracted into a
temporary folder that is renamed only when extraction has finished.

When a file cannot be downloaded (offline, server down, wrong checksum), the error names the
URL(s) tried and the exact path where the file can be placed by hand; :func:`fetch` then uses
it without any network access.

**A mirror** (``SPARED_MIRROR``, :data:`MIRROR_ENV`): a web server that holds the files under the
same relative paths as the download cache (``source.files[].path`` of ``data/datasets.yml``, e.g.
a copy of a filled cache behind an institutional proxy). When it is set to the server's URL
prefix, every file is asked from ``<prefix>/<path>`` first and from its published URLs after;
checksums are checked as usual, so a mirror cannot hand over a different file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pooch
import requests
import urllib3
from tqdm.auto import tqdm

from spared_utils import paths
from spared_utils.utils import atomic_path

log = logging.getLogger(__name__)

#: (connect, read) timeouts in seconds of every request.
DEFAULT_TIMEOUT: tuple[float, float] = (15.0, 60.0)
#: Extra attempts after a failed one, and the base of the pause between them (seconds).
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
#: Statuses worth retrying (server-side or rate limiting); any other HTTP error fails at once.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ARCHIVE_SUFFIXES: dict[str, str] = {".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar": "tar", ".zip": "zip"}
_DONE_MARKER = ".extracted"
#: Environment variable holding the URL prefix of a mirror of the download cache (see the module).
MIRROR_ENV = "SPARED_MIRROR"


class DownloadError(RuntimeError):
    """A file could not be downloaded (the message says where to put it by hand)."""


class ChecksumError(DownloadError):
    """The downloaded (or hand-placed) file does not have the expected SHA-256."""


class ArchiveError(RuntimeError):
    """An archive in the cache is corrupt, truncated or unsafe to extract."""


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The download cache: ``cache_dir`` if given, else ``SPARED_CACHE_DIR``, else pooch's OS cache."""
    return Path(cache_dir).expanduser().resolve() if cache_dir is not None else paths.cache_dir()


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class ResumableDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes broken transfers.

    Parameters
    ----------
    retries
        Extra attempts after the first one (network errors, HTTP 5xx/408/429).
    timeout
        ``(connect, read)`` timeouts in seconds passed to :func:`requests.get`.
    backoff
        Pause before retry ``i`` is ``backoff * 2**i`` seconds (capped at 30 s).
    progressbar
        Show a tqdm bar in bytes.
    chunk_size
        Bytes per read from the socket.
    """

    def __init__(
        self,
        retries: int = 3,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        backoff: float = 1.0,
        progressbar: bool = True,
        chunk_size: int = 1 << 16,
    ) -> None:
        self.retries = int(retries)
        self.timeout = timeout
        self.backoff = float(backoff)
        self.progressbar = progressbar
        self.chunk_size = int(chunk_size)
        self.attempts: list[dict] = []  # what each attempt asked and got (read by tests)

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False) -> bool | None:
        if check_only:  # pooch's "is it available?" probe
            try:
                response = requests.head(url, allow_redirects=True, timeout=self.timeout)
            except requests.RequestException:
                return False
            return response.status_code == 200
        output = Path(output_file)
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            try:
                self._attempt(url, output)
                return None
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status not in RETRY_STATUSES:
                    raise
                last_error = err
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    _IncompleteTransfer) as err:
                last_error = err
            log.info("download of %s interrupted (%s); attempt %d of %d", url, last_error, attempt + 1,
                     self.retries + 1)
        assert last_error is not None
        raise last_error

    def _attempt(self, url: str, output: Path) -> None:
        have = output.stat().st_size if output.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        record = {"url": url, "range_from": have, "status": None}
        self.attempts.append(record)
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as response:
            record["status"] = response.status_code
            if response.status_code == 416 and have:
                total = _content_range_total(response.headers.get("Content-Range"))
                if total == have:  # the partial file was complete already
                    return
                output.write_bytes(b"")  # our partial data is no prefix of the file: restart
                raise _IncompleteTransfer(f"range {have}- not satisfiable; restarting from zero")
            response.raise_for_status()
            if response.status_code == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != have:
                    output.write_bytes(b"")
                    raise _IncompleteTransfer(f"server resumed at byte {start}, not {have}; restarting")
                mode, done = "ab", have
                total = _content_range_total(response.headers.get("Content-Range"))
            else:  # 200: the server sends everything (no Range support, or a fresh start)
                mode, done = "wb", 0
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None and "Content-Encoding" not in response.headers else None
            bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=output.name if not output.name.startswith("tmp") else url.rsplit("/", 1)[-1][:40],
                       disable=not self.progressbar, leave=False)
            try:
                with open(output, mode) as handle:
                    for block in _blocks(response, self.chunk_size):
                        handle.write(block)
                        done += len(block)
                        bar.update(len(block))
            finally:
                bar.close()
            if total is not None and done < total:
                raise _IncompleteTransfer(f"received {done} of {total} bytes")


def _blocks(response: requests.Response, chunk_size: int):
    """The body as it arrives: ``read1`` hands over every byte received before a broken connection
    (``iter_content`` would drop the last, incomplete chunk), so a resumed request loses nothing."""
    raw = response.raw
    if "Content-Encoding" in response.headers or not hasattr(raw, "read1"):
        yield from response.iter_content(chunk_size=chunk_size)
        return
    try:
        while block := raw.read1(chunk_size):
            yield block
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, OSError) as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err


class _IncompleteTransfer(IOError):
    """The connection closed before the announced number of bytes arrived."""


def _content_range_total(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def mirrored(urls: Sequence[str], path: str | os.PathLike, mirror: str | None = None) -> list[str]:
    """The URLs to try for the cache file ``path``: ``<mirror>/<path>`` first, then ``urls``.

    ``mirror`` defaults to the ``SPARED_MIRROR`` environment variable; empty or unset leaves
    ``urls`` as they are. The path is URL-quoted (spaces, ``#``) and always uses ``/``.
    """
    prefix = (os.environ.get(MIRROR_ENV, "") if mirror is None else mirror).strip()
    if not prefix:
        return list(urls)
    if not prefix.startswith(("http://", "https://")):
        raise ValueError(f"{MIRROR_ENV}={prefix!r} is not an http(s) URL; set it to the URL prefix under which the "
                         "mirror serves the cache's files (e.g. https://mirror.example.org/spared-cache), or unset it")
    rel = Path(path).as_posix().lstrip("/")
    own = f"{prefix.rstrip('/')}/{quote(rel)}"
    return [own, *(u for u in urls if u != own)]


def _hint(target: Path, urls: Sequence[str], sha256: str | None) -> str:
    check = f" with SHA-256 {sha256}" if sha256 else ""
    return (f"If this machine is offline or the server is down, download the file yourself from "
            f"{' or '.join(urls)} and place it at {target}{check}; it will then be used without "
            f"any network access.")


def fetch(
    urls: str | Sequence[str],
    path: str | os.PathLike,
    sha256: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    extract: str | None = None,
    force: bool = False,
    progressbar: bool = True,
    retries: int | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    backoff: float | None = None,
    mirror: str | None = None,
) -> Path:
    """Download a file into the cache once, verify it, and optionally extract it.

    Parameters
    ----------
    urls
        One URL or several mirrors, tried in order (after ``mirror``'s copy, see :func:`mirrored`).
    path
        Where the file goes, relative to the cache folder (e.g. ``"mendeley/2bh5fchcv6-1.zip"``).
    sha256
        Expected SHA-256 hex digest, or ``None`` when no checksum is known (the file is then
        accepted as downloaded; its digest is logged).
    cache_dir
        Cache folder; default ``SPARED_CACHE_DIR`` or pooch's OS cache (:func:`resolve_cache_dir`).
    extract
        ``"zip"``, ``"tar"`` or ``"tar.gz"`` to extract the archive next to itself (see
        :func:`extract_archive`); ``None`` to keep the file as is.
    force
        Download again even if a verified file is present.
    progressbar, retries, timeout, backoff
        See :class:`ResumableDownloader`; ``None`` takes :data:`DEFAULT_RETRIES` /
        :data:`DEFAULT_BACKOFF`.
    mirror
        URL prefix of a mirror of the cache, asked first for ``<mirror>/<path>``; default the
        ``SPARED_MIRROR`` environment variable (unset: no mirror).

    Returns
    -------
    Path
        The downloaded file, or the extraction folder when ``extract`` is given.

    Raises
    ------
    DownloadError
        The file could not be downloaded from any URL; the message names the URLs and the path
        where the file can be placed by hand.
    ChecksumError
        The downloaded file's SHA-256 differs from ``sha256`` (nothing is kept).
    """
    url_list = mirrored([urls] if isinstance(urls, str) else list(urls), path, mirror)
    if not url_list:
        raise ValueError(f"fetch needs at least one URL for {path}")
    target = resolve_cache_dir(cache_dir) / Path(path)
    if sha256 is not None:
        sha256 = sha256.lower().removeprefix("sha256:")
    present = target.exists() and not force
    if present and sha256 is not None and sha256sum(target) != sha256:
        log.warning("%s exists but its SHA-256 differs from %s; downloading it again", target, sha256)
        present = False
    if not present:
        if target.exists():  # pooch would keep an existing file whose checksum it cannot check
            target.unlink()
        downloader = ResumableDownloader(DEFAULT_RETRIES if retries is None else retries, timeout,
                                         DEFAULT_BACKOFF if backoff is None else backoff, progressbar)
        _download(url_list, target, sha256, downloader)
    return extract_archive(target, extract, force=force) if extract else target


def _download(urls: list[str], target: Path, sha256: str | None, downloader: ResumableDownloader) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    known = f"sha256:{sha256}" if sha256 else None
    failures: list[str] = []
    for url in urls:
        try:
            pooch.retrieve(url, known_hash=known, fname=target.name, path=target.parent,
                           downloader=downloader, progressbar=False)
            return
        except ValueError as err:  # pooch: hash mismatch (its temporary file is already removed)
            if "hash" not in str(err).lower():
                raise
            failures.append(f"{url}: checksum mismatch ({err})")
            if len(urls) == 1:
                raise ChecksumError(
                    f"{url} downloaded, but its SHA-256 is not the expected {sha256}; nothing was kept "
                    f"in the cache. The file may have changed on the server, or the transfer was "
                    f"corrupted: try again, or check the checksum in data/datasets.yml. "
                    + _hint(target, urls, sha256)) from err
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else "?"
            failures.append(f"{url}: HTTP {status}")
        except (requests.RequestException, OSError) as err:
            failures.append(f"{url}: {type(err).__name__}: {err}")
    kind = ChecksumError if failures and all("checksum" in f for f in failures) else DownloadError
    raise kind(f"could not download {target.name} ({'; '.join(failures)}). " + _hint(target, urls, sha256))


def archive_kind(path: str | os.PathLike) -> str | None:
    """``"zip"``, ``"tar"``, ``"tar.gz"`` from a file name, or ``None`` if not an archive name."""
    name = Path(path).name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def extraction_dir(archive: str | os.PathLike) -> Path:
    """Where :func:`extract_archive` puts an archive's content: ``x.zip`` → ``x/``."""
    archive = Path(archive)
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return archive.with_name(name[: -len(suffix)])
    return archive.with_name(name + ".d")


def extract_archive(archive: str | os.PathLike, kind: str | None = None, *, force: bool = False) -> Path:
    """Extract an archive next to itself, atomically (temporary folder, then rename).

    Parameters
    ----------
    archive
        A ``.zip``, ``.tar`` or ``.tar.gz``/``.tgz`` file.
    kind
        ``"zip"``, ``"tar"`` or ``"tar.gz"``; guessed from the name when ``None``.
    force
        Extract again even if a finished extraction is present.

    Returns
    -------
    Path
        The extraction folder (:func:`extraction_dir`); it exists only once complete.

    Raises
    ------
    ArchiveError
        The archive is corrupt or truncated, or a member would land outside the folder.
    """
    archive = Path(archive)
    kind = kind or archive_kind(archive)
    if kind not in ("zip", "tar", "tar.gz"):
        raise ValueError(f"{archive}: unknown archive type {kind!r}; use 'zip', 'tar' or 'tar.gz'")
    dest = extraction_dir(archive)
    if (dest / _DONE_MARKER).exists() and not force:
        return dest
    try:
        with atomic_path(dest, directory=True) as tmp:
            if kind == "zip":
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp, "r:gz" if kind == "tar.gz" else "r:")
            (tmp / _DONE_MARKER).write_text(f"{archive.name}\n")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as err:
        if isinstance(err, ArchiveError):
            raise
        raise ArchiveError(
            f"{archive} cannot be extracted ({type(err).__name__}: {err}): the archive is corrupt or "
            f"truncated. Delete it and run again to download it anew.") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"CRC error in member {bad}")
        root = dest.resolve()
        for member in zf.namelist():
            target = (dest / member).resolve()
            if target != root and root not in target.parents:
                raise ArchiveError(f"{archive}: member {member!r} would be written outside {dest}; "
                                   "refusing to extract an unsafe archive")
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path, mode: str) -> None:
    with tarfile.open(archive, mode) as tf:
        try:
            tf.extractall(dest, filter="data")  # refuses absolute paths, '..', device files
        except tarfile.FilterError as err:
            raise ArchiveError(f"{archive}: unsafe member ({err}); refusing to extract") from err


# ------------------------------------------------------------------------------------------------
# Google Drive (the authors' shared folder of processed datasets)
# ------------------------------------------------------------------------------------------------

#: Hosts whose links need ``gdown``: Google Drive answers a large file with a confirmation page
#: instead of the file, which ``gdown`` (PyPI) gets past.
DRIVE_HOSTS = ("drive.google.com", "drive.usercontent.google.com", "docs.google.com")


def is_drive_url(url: str) -> bool:
    """Whether ``url`` is a Google Drive link (downloaded with ``gdown``)."""
    from urllib.parse import urlparse

    return urlparse(url).hostname in DRIVE_HOSTS


def fetch_any(urls: str | Sequence[str], path: str | os.PathLike, sha256: str | None = None, *,
              cache_dir: str | os.PathLike | None = None, extract: str | None = None, force: bool = False,
              progressbar: bool = True) -> Path:
    """:func:`fetch`, with Google Drive links downloaded by ``gdown`` (progress bar, resumed transfers).

    Other URLs go through :func:`fetch` (mirror, retries, resume, checksum). A Drive link is
    tried after them; a missing ``gdown`` or a failed download raises :class:`DownloadError`
    naming the link, the cache path to put the file at by hand, and ``pip install gdown``.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    plain = [u for u in url_list if not is_drive_url(u)]
    drive = [u for u in url_list if is_drive_url(u)]
    target = resolve_cache_dir(cache_dir) / Path(path)
    failure: Exception | None = None
    if plain or not drive:
        try:
            return fetch(plain, path, sha256, cache_dir=cache_dir, extract=extract, force=force,
                         progressbar=progressbar)
        except DownloadError as err:
            if not drive or isinstance(err, ChecksumError):
                raise
            failure = err
    if target.exists() and not force and (sha256 is None or sha256sum(target) == sha256):
        return extract_archive(target, extract, force=force) if extract else target
    errors = [str(failure)] if failure else []
    for url in drive:
        try:
            _drive_download(url, target, progressbar)
        except DownloadError as err:
            errors.append(str(err))
            continue
        if sha256 is not None and sha256sum(target) != sha256:
            target.unlink()
            raise ChecksumError(f"{url} downloaded, but its SHA-256 is not the expected {sha256}; nothing was kept. "
                                + _hint(target, url_list, sha256))
        return extract_archive(target, extract, force=force) if extract else target
    raise DownloadError(f"could not download {target.name} ({'; '.join(errors)}). " + _hint(target, url_list, sha256))


def _drive_download(url: str, target: Path, progressbar: bool) -> None:
    """One Google Drive file to ``target`` with ``gdown`` (a partial file is resumed next time)."""
    try:
        import gdown
    except ImportError as err:
        raise DownloadError(f"{url} is a Google Drive link, which needs gdown: pip install gdown") from err
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        got = gdown.download(url, str(partial), quiet=not progressbar, fuzzy=True, resume=True)
    except Exception as err:  # noqa: BLE001 - gdown raises requests' and its own errors
        raise DownloadError(f"{url}: {type(err).__name__}: {err} (offline, or the link is no longer shared)") from err
    if not got or not partial.is_file():
        raise DownloadError(f"{url}: gdown fetched nothing (offline, or the link is no longer shared)")
    partial.replace(target)
