"""Technicians' files for Chatwoot (two-way): the GLPI Documents of a followup or solution, and their bytes.

The poll lists a followup's or solution's Documents (:meth:`TechnicianFiles.listed`) into its ``glpi_*`` event;
the apply step downloads those that may go (:meth:`TechnicianFiles.fetch`: through the API, checked against their
``sha1sum``, within Chatwoot's and the channel's limits) and posts them as the message's attachments. What cannot
go stays a link to GLPI with the reason (``front/document.send.php``, which needs a GLPI login).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from app.chatwoot.api import ChatwootClient
from app.files.policy import chatwoot_refusal, megabytes
from app.files.transfer import Fetched, FileMover, spool
from app.glpi import GlpiError
from app.pipeline.clients import HookClients
from app.sync.state import HookRecord

if TYPE_CHECKING:
    from app.glpi.client import GlpiClient

log = logging.getLogger("cwglpi.worker")
#: Documents listed per followup or solution.
MAX_ATTACHMENTS = 10


class TechnicianFiles:
    """GLPI Documents of technicians' followups and solutions, on their way to Chatwoot."""

    def __init__(self, mover: FileMover, clients: HookClients, max_per_message: int) -> None:
        self.mover = mover
        self.clients = clients
        self.max_per_message = max_per_message

    def sent(self, files: list[tuple[str, str | None, Fetched]]) -> None:
        """Count the files posted with a message."""
        for _, _, data in files:
            self.mover.observe("to_chatwoot", "moved", data.size)

    @staticmethod
    async def listed(client: GlpiClient, hook: HookRecord, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The GLPI Documents attached to a followup or solution (at most :data:`MAX_ATTACHMENTS`).

        Each as ``{"document_id", "name", "mime", "url"}``: the apply step posts the file itself when it can, else
        the link (``front/document.send.php``, which needs a GLPI login). A failed look-up leaves the message
        without them rather than holding it back.
        """
        root = hook.settings.api_url.removesuffix("/apirest.php")
        try:
            rows = await client.get_subitems(payload["itemtype"], payload["item_id"], "Document_Item")
            found = []
            for row in rows[:MAX_ATTACHMENTS]:
                document_id = row.get("documents_id")
                if not isinstance(document_id, int):
                    continue
                document = await client.get_item("Document", document_id)
                name = str(document.get("filename") or document.get("name") or f"document {document_id}")
                found.append(
                    {
                        "document_id": document_id,
                        "name": name,
                        "mime": str(document.get("mime") or ""),
                        "sha1": str(document.get("sha1sum") or ""),
                        "url": f"{root}/front/document.send.php?docid={document_id}",
                    }
                )
        except GlpiError as exc:
            log.warning("two-way: attachments of %s %s not read: %s", payload["itemtype"], payload["item_id"], exc)
            return []
        return found

    async def fetch(
        self, hook: HookRecord, chatwoot: ChatwootClient, conversation_id: int, listed: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str | None, Fetched]]]:
        """Download the Documents that may go as attachments; the listing marked (attached, or why not) and files.

        The caller closes the files. A Document GLPI will not give (gone, refused, unreachable) stays a link.
        """
        client = self.clients.client_for(hook)
        channel = await chatwoot.channel(conversation_id)
        marked: list[dict[str, Any]] = []
        fetched: list[tuple[str, str | None, Fetched]] = []
        try:
            for entry in listed:
                reason, file = await self._one(hook, client, channel, entry, len(fetched))
                if file is None:
                    marked.append({**entry, "reason": reason} if reason else entry)
                    continue
                fetched.append((str(entry.get("name") or "file"), str(entry.get("mime") or "") or None, file))
                marked.append({**entry, "attached": True})
        except BaseException:
            for _, _, file in fetched:
                file.close()
            raise
        return marked, fetched

    async def _one(
        self, hook: HookRecord, client: GlpiClient, channel: str | None, entry: dict[str, Any], taken: int
    ) -> tuple[str | None, Fetched | None]:
        """One Document for the message: its file, or why it stays a link (None: a link, nothing to say)."""
        files = self.mover
        assert files is not None
        document_id = entry.get("document_id")
        if not isinstance(document_id, int):
            return None, None
        if taken >= self.max_per_message:
            return f"only the first {self.max_per_message} files of a message are attached", None
        if not entry.get("sha1"):
            files.observe("to_chatwoot", "refused")
            return "the GLPI document holds no file", None
        out = spool()
        try:
            size = await client.download_document(document_id, out.write, files.max_bytes, seconds=files.timeout)
        except GlpiError as exc:
            out.close()
            files.observe("to_chatwoot", "unreachable")
            return f"GLPI did not give the file ({exc.code})", None
        out.finish()
        mime = str(entry.get("mime") or "") or None
        if size > files.max_bytes:
            reason: str | None = f"it is larger than {megabytes(files.max_bytes)}, the most this worker moves"
            outcome = "too_large"
        elif out.sha1 != entry["sha1"]:
            # A Document whose file is gone from GLPI's disk: GLPI 10 answers 200 with nothing (measured).
            reason, outcome = "GLPI did not give the file (its checksum differs)", "unreachable"
        else:
            reason, outcome = chatwoot_refusal(channel, mime, size, files.max_bytes), "channel"
        if reason is not None:
            out.close()
            files.observe("to_chatwoot", outcome)
            return reason, None
        await files.pace(hook.hook_id, size)
        return None, out
