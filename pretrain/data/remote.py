"""Opening shard and index URLs: local paths, file://, http(s):// (the Hub's token only to
the Hub), pipe:; retries, deadlines, one-line errors; a hashing reader for shard checks.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

import webdataset as wds

from inf590k.dataset.hub import is_hub_host, read_token
from pretrain.config import DataConfig

log = logging.getLogger(__name__)

# HTTP statuses worth retrying; any other 4xx is a wrong URL or missing rights.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class ShardUnreachableError(RuntimeError):
    """The data cannot be read: a URL failed after its retries (or is wrong: 404, 403), too many
    of a pass's shards failed, or a whole pass gave no usable sample. Its message is one line."""


class NetworkDisabledError(ShardUnreachableError):
    """HF_HUB_OFFLINE is set and a URL needs the network: fatal, never retried or skipped."""


class ShardReadTimeout(TimeoutError):
    """A whole shard took longer than --read-deadline to arrive (a dripping server)."""


def _join(base_url: str, relative: str) -> str:
    """`relative` resolved against the folder of `base_url` (paths, file:// and http(s)://).
    For names the user typed; names read from an index go through `index_member_url`."""
    if "://" in base_url:
        return urllib.parse.urljoin(base_url, relative)
    return posixpath.join(posixpath.dirname(base_url), relative)


class _DropAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """urllib forwards every header on redirect; the Hub redirects to a CDN that must not get
    the token (requests/httpx do the same stripping)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and urllib.parse.urlparse(newurl).hostname
            != urllib.parse.urlparse(req.full_url).hostname
        ):
            new.remove_header("Authorization")
        return new


def redact_url(url: str) -> str:
    """`url` fit for messages: query values (signed-URL signatures, tokens) and passwords hidden."""
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{key}=***" if sep else key
        for key, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def network_disabled() -> bool:
    """HF_HUB_OFFLINE set to a true value (as huggingface_hub reads it), checked at each call."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class _DeadlineReader(io.RawIOBase):
    """An HTTP body that fails with ShardReadTimeout once `deadline_s` have passed since the
    request. Each read takes at most one socket read (`read1`), which the per-read timeout
    bounds, so a server sending a byte every few seconds cannot hold the worker for longer
    than deadline + timeout."""

    def __init__(self, response: IO[bytes], url: str, deadline_s: float) -> None:
        super().__init__()
        self._response = response
        self._url = url
        self._deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise ShardReadTimeout(
                f"{redact_url(self._url)} was still arriving after {self._deadline_s:.0f}s "
                "(--read-deadline)"
            )
        chunk = self._response.read1(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._response.close()
        super().close()


def _open_http(url: str, config: DataConfig) -> IO[bytes]:
    # Hand-written rather than webdataset's curl pipe: curl puts the token on its command line
    # (visible to other users) and webdataset's pipe errors print that command line.
    headers = {"User-Agent": "inf590k-pretrain"}
    if is_hub_host(urllib.parse.urlparse(url).hostname):
        token = read_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
    opener = urllib.request.build_opener(_DropAuthOnRedirect)
    response = opener.open(urllib.request.Request(url, headers=headers), timeout=config.timeout)
    return io.BufferedReader(_DeadlineReader(response, url, config.read_deadline), 1 << 20)


def _local_path(url: str) -> str | None:
    """The file a local URL names (plain path or file://), None for network and pipe URLs."""
    if url.startswith("pipe:"):
        return None
    if url.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(url).path)
    return None if "://" in url else url


def open_url(url: str, config: DataConfig) -> IO[bytes]:
    """Open a shard or index for reading; retry transient failures, then name the URL.

    A local file that does not exist, a non-transient HTTP status (404, 403) and HF_HUB_OFFLINE
    fail at once; network errors and 408/429/5xx are retried --retries times."""
    shown = redact_url(url)
    scheme = urllib.parse.urlparse(url).scheme
    local = _local_path(url)
    if local is not None:
        if not os.path.isfile(local):
            raise ShardUnreachableError(f"{shown}: no such file; check the path")
        return open(local, "rb")  # noqa: SIM115 - the caller closes it
    if scheme in ("http", "https") and network_disabled():
        raise NetworkDisabledError(
            f"HF_HUB_OFFLINE is set: not fetching {shown}; use local shards or unset it"
        )
    attempts = max(1, config.retries)
    last_reason = ""
    for attempt in range(attempts):
        try:
            if scheme in ("http", "https"):
                return _open_http(url, config)
            return wds.gopen(url, "rb")
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_HTTP:
                hint = (
                    "set HF_TOKEN to a token with read access"
                    if exc.code in (401, 403)
                    else "check the URL"
                )
                raise ShardUnreachableError(f"HTTP {exc.code} for {shown}: {hint}") from None
            last_reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_reason = str(getattr(exc, "reason", exc))
        if attempt + 1 < attempts:
            wait = config.retry_wait * 2**attempt
            log.warning(
                "cannot open %s (%s); retry %d in %.1fs", shown, last_reason, attempt + 1, wait
            )
            time.sleep(wait)
    raise ShardUnreachableError(
        f"cannot open {shown} after {attempts} attempts ({last_reason}); "
        "check the path/URL and the network, or remove it from --shards"
    )


class HashingReader(io.RawIOBase):
    """A shard's byte stream that hashes what passes through it; `matches()` reads the rest
    (the end-of-archive padding, or anything appended) and compares with the expected sha256.
    Not seekable, so the tar reader reads skipped members instead of seeking past them."""

    def __init__(self, stream: IO[bytes], expected: str) -> None:
        super().__init__()
        self._stream = stream
        self._expected = expected
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._digest.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def matches(self) -> bool:
        while self.read(1 << 20):
            pass
        return self._digest.hexdigest() == self._expected

    def close(self) -> None:
        self._stream.close()
        super().close()
