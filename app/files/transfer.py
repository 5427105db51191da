"""Moving file bytes with bounded memory: streamed into a spooled temporary file, capped, paced per hook.

A file never sits whole in memory beyond :data:`SPOOL_BYTES`; past that it is on disk (the temporary directory)
until :meth:`Fetched.close`. :class:`ByteRate` spaces each hook's bytes so that one large file does not take the
link (and GLPI's PHP workers) from the hook's other conversations.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from app.files.policy import forbidden_address, origin

#: Bytes kept in memory per file before it spills to a temporary file.
SPOOL_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024
#: Redirects followed from a Chatwoot ``data_url`` (its blob redirect to storage, and storage's own).
MAX_REDIRECTS = 3


class FetchError(Exception):
    """A file could not be downloaded; the message is one line for the followup and the logs."""


class FileTooLargeError(FetchError):
    pass


class ByteRate:
    """Bytes per second per key (a hook), with one second of burst; 0 disables pacing."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._next: dict[Any, float] = {}

    async def take(self, key: Any, size: int) -> None:
        """Wait until ``size`` more bytes of ``key`` fit in its rate."""
        if self.per_second <= 0 or size <= 0:
            return
        now = time.monotonic()
        start = max(now - 1.0, self._next.get(key, now - 1.0))
        self._next[key] = start + size / self.per_second
        if self._next[key] > now:
            await asyncio.sleep(self._next[key] - now)


@dataclass
class Fetched:
    """A downloaded file: rewound, with its size, sha1 and the MIME type the server gave."""

    file: IO[bytes]
    size: int = 0
    sha1: str = ""
    mime: str | None = None
    _hash: Any = field(default_factory=hashlib.sha1, repr=False)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> Fetched:
        self.sha1 = self._hash.hexdigest()
        self.file.seek(0)
        return self

    def close(self) -> None:
        self.file.close()


def spool() -> Fetched:
    """An empty :class:`Fetched` to write into."""
    return Fetched(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))


async def _read(resp: aiohttp.ClientResponse, out: Fetched, cap: int, rate: ByteRate, key: Any) -> None:
    if resp.status >= 300:
        raise FetchError(f"HTTP {resp.status}")
    if resp.content_length is not None and resp.content_length > cap:
        raise FileTooLargeError(str(resp.content_length))
    out.mime = resp.headers.get("Content-Type")
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        if out.size + len(chunk) > cap:
            raise FileTooLargeError(str(out.size + len(chunk)))
        await rate.take(key, len(chunk))
        out.write(chunk)


class SafeResolver(ThreadedResolver):
    """DNS answers without the addresses files are never fetched from (a name pointing at cloud metadata)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = [a for a in await super().resolve(host, port, family) if not forbidden_address(a["host"])]
        if not answers:
            raise OSError(errno.EACCES, "only link-local addresses")
        return answers


def session() -> aiohttp.ClientSession:
    """The HTTP session for file downloads: names resolving to link-local (metadata) addresses are refused."""
    connector = aiohttp.TCPConnector(resolver=SafeResolver(), limit=32)
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": "chatwoot-glpi-sync"})


async def _follow(http: aiohttp.ClientSession, url: str, out: Fetched, cap: int, rate: ByteRate, key: Any) -> None:
    for _ in range(MAX_REDIRECTS + 1):
        async with http.get(url, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                await _read(resp, out, cap, rate, key)
                return
            url = str(resp.url.join(URL(location)))
            if origin(url) is None or forbidden_address(URL(url).host or ""):
                raise FetchError("redirected to an address files are never fetched from")
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


async def fetch(
    http: aiohttp.ClientSession, url: str, *, cap: int, rate: ByteRate, key: Any, seconds: float
) -> Fetched:
    """Download ``url`` (no credentials sent) within ``seconds``, at most ``cap`` bytes.

    Redirects (Chatwoot's blob redirect to its storage) are followed by hand, :data:`MAX_REDIRECTS` at most, each
    target checked like the first address: never to a link-local (cloud metadata) address.

    Raises:
        FileTooLargeError: the file is larger than ``cap`` (told by ``Content-Length`` or found while reading).
        FetchError: an HTTP error, a refused or broken connection, a timeout. The message never holds the URL
            (a ``data_url`` is signed).
    """
    out = spool()
    try:
        async with asyncio.timeout(seconds):
            await _follow(http, url, out, cap, rate, key)
        return out.finish()
    except FetchError:
        out.close()
        raise
    except TimeoutError:
        out.close()
        raise FetchError(f"no complete answer within {seconds:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        out.close()
        code = errno.errorcode.get(exc.os_error.errno or 0, type(exc.os_error).__name__)
        raise FetchError(f"cannot connect ({code})") from None  # strerror may name the address
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        out.close()
        raise FetchError(f"the download failed ({type(exc).__name__})") from None


class FileMover(Protocol):
    """What the GLPI executor and the two-way sync need to move files (the worker's :class:`FileTransfers`)."""

    max_bytes: int
    timeout: float

    async def fetch(self, url: str, cap: int, hook_id: int) -> Fetched: ...

    async def pace(self, hook_id: int, size: int) -> None: ...

    def observe(self, direction: str, outcome: str, size: int = 0) -> None: ...
