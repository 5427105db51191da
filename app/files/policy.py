"""What may travel as a file, decided without I/O: where a file may be downloaded from, what each side accepts.

**Where from.** A Chatwoot attachment's ``data_url`` comes with the event, and anything that can write to the
producers' topic writes events: a URL is downloaded only when its origin (scheme, host, port) is the Chatwoot the
worker or the hook is connected to (``GLPI_SYNC_CHATWOOT_URL``, the hook's ``chatwoot_url``) or an operator named
its host (``GLPI_SYNC_FILE_HOSTS``); otherwise the followup keeps the link and says why. Chatwoot's own redirect to
its storage (S3, GCS, its disk) is followed from there: only Chatwoot chooses it.

**What each side takes.** GLPI: ``document_max_size`` (``getGlpiConfig``) and the worker's cap, whichever is
smaller; its document types decide the rest (a refused type comes back as a Document without a file, so every
upload is checked against its sha1). Chatwoot: 40 MB per attachment, and the channel's own limits (WhatsApp
Cloud's per-type sizes and types), known here so a file the channel would drop stays a link with a note.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MIB = 1024 * 1024
#: Chatwoot attachment kinds that are files (``location``, ``contact`` and ``fallback`` are not).
FILE_KINDS = frozenset({"image", "audio", "video", "file"})
#: Chatwoot's default ``MAXIMUM_FILE_UPLOAD_SIZE`` (MB) for an attachment.
CHATWOOT_MAX_BYTES = 40 * MIB

#: WhatsApp Cloud API media limits by kind: allowed MIME types (None: any) and the size cap.
_WHATSAPP: dict[str, tuple[frozenset[str] | None, int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MIB),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * MIB),
    "audio": (frozenset({"audio/aac", "audio/mp4", "audio/mpeg", "audio/amr", "audio/ogg"}), 16 * MIB),
    "file": (None, 100 * MIB),
}
_CHANNEL_LIMITS = {"Channel::Whatsapp": _WHATSAPP}


@dataclass(frozen=True)
class FilePolicy:
    """Worker-wide file settings (``GLPI_SYNC_FILE_*``), passed to the core in the context."""

    #: Upload Chatwoot attachments to GLPI and post GLPI documents as Chatwoot attachments; off: links only.
    enabled: bool = True
    #: The largest file moved either way (GLPI's own ``document_max_size`` also applies towards GLPI).
    max_bytes: int = 20 * MIB
    #: Files moved per message; the others stay links.
    max_per_message: int = 10
    #: Hosts (``host`` or ``host:port``) files may also be downloaded from, beside the Chatwoot URLs.
    extra_hosts: frozenset[str] = frozenset()


def origin(url: str | None) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, lowercased with the default port filled in; None otherwise."""
    try:
        parts = urlsplit(url or "")
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


#: Addresses no Chatwoot or storage lives at: cloud metadata services (link-local, AWS's IPv6 one).
_NEVER = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::/32"),
)


def forbidden_address(host: str) -> bool:
    """Whether ``host`` (an IP address; names are not resolved here) is one files are never fetched from."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any((mapped or address) in network for network in _NEVER if (mapped or address).version == network.version)


def download_refusal(url: str, chatwoot_urls: tuple[str | None, ...], policy: FilePolicy) -> str | None:
    """Why ``url`` must not be downloaded (None: it may).

    It is not on this hook's Chatwoot nor an allowed host, or it is a link-local (cloud metadata) address, whoever
    allowed it.
    """
    where = origin(url)
    if where is None:
        return "its address is not an http(s) URL"
    if forbidden_address(where[1]):
        return f"{where[1]} is a link-local (cloud metadata) address"
    if any(origin(known) == where for known in chatwoot_urls if known):
        return None
    _, host, port = where
    if host in policy.extra_hosts or f"{host}:{port}" in policy.extra_hosts:
        return None
    return (
        f"{host} is not this hook's Chatwoot (set GLPI_SYNC_CHATWOOT_URL or the hook's chatwoot_url, "
        "or name the host in GLPI_SYNC_FILE_HOSTS)"
    )


#: File name extensions by MIME type, for files that came without one.
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


def file_name(label: str | None, url: str | None, mime: str | None = None) -> str:
    """A file name safe for both sides: the label or the URL's last segment, no path, no control characters."""
    raw = (label or "").strip() or (url or "").split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]+", "_", raw).strip(" .")[:200]
    if not name:
        name = "attachment"
    if "." not in name and mime:
        name += _EXTENSIONS.get(mime.split(";", 1)[0].strip().lower(), "")
    return name


def attachment_kind(mime: str | None) -> str:
    """Chatwoot's ``file_type`` for a MIME type (its ``FileTypeHelper``): image, video, audio or file."""
    major = (mime or "").split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "file"


def chatwoot_refusal(channel: str | None, mime: str | None, size: int, cap: int) -> str | None:
    """Why a file of ``size`` bytes must not be posted to a conversation of ``channel`` (None: it may)."""
    limit = min(cap, CHATWOOT_MAX_BYTES)
    if size > limit:
        return f"it is {megabytes(size)}, over the limit of {megabytes(limit)}"
    rules = _CHANNEL_LIMITS.get(channel or "")
    if rules is None:
        return None
    kind = attachment_kind(mime)
    types, channel_cap = rules[kind]
    label = channel.removeprefix("Channel::") if channel else "this channel"
    clean = (mime or "").split(";", 1)[0].strip().lower()
    if types is not None and clean not in types:
        return f"{label} does not deliver {clean or 'this type of'} {kind}s"
    if size > channel_cap:
        return f"{label} delivers {kind}s up to {megabytes(channel_cap)} (this one is {megabytes(size)})"
    return None


def megabytes(size: int) -> str:
    """``1.5 MB`` (MiB, as GLPI and Chatwoot count)."""
    value = size / MIB
    return f"{value:.1f} MB" if value < 10 else f"{value:.0f} MB"
