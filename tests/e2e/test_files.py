"""Files both ways, end to end: a customer's photo and PDF become GLPI Documents of the followup, a technician's
become Chatwoot attachments, with the same bytes; what cannot travel stays a link that says why.

Chatwoot emulator (attachments stored as ActiveStorage blobs behind signed redirects) → signed webhooks → ingress →
Kafka → worker → GLPI emulator (multipart ``POST /Document``, sha1 kept), and back through two-way's poll.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import GLPI_VERSIONS, SyncEnv
from tests.e2e.test_two_way import Technician, outcome_with, posted, start_two_way
from tests.harness import ChatwootEmulatorProcess, EmulatorProcess, wait_until

pytestmark = pytest.mark.broker

MIB = 1024 * 1024


def _png(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)


def _pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


def _file(name: str, mime: str, content: bytes) -> dict[str, str]:
    return {"name": name, "content_type": mime, "content_b64": base64.b64encode(content).decode()}


def upload(technician: Technician, followup: int, name: str, mime: str, content: bytes) -> int:
    """What a technician does in GLPI's UI: attach a file to their followup (a Document and its link)."""

    async def go() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{technician.api}/initSession", headers=technician.headers) as resp:
                token = (await resp.json())["session_token"]
            headers = {"App-Token": technician.headers["App-Token"], "Session-Token": token}
            form = aiohttp.FormData()
            form.add_field("uploadManifest", orjson.dumps({"input": {"name": name}}).decode())
            form.add_field("filename[0]", content, filename=name, content_type=mime)
            async with http.post(f"{technician.api}/Document", data=form, headers=headers) as resp:
                document = int((await resp.json())["id"])
            link = {"input": {"documents_id": document, "itemtype": "ITILFollowup", "items_id": followup}}
            async with http.post(f"{technician.api}/Document_Item", json=link, headers=headers) as resp:
                assert resp.status == 201
            return document

    return asyncio.run(go())


def documents_of(emulator: EmulatorProcess, followup: int) -> dict[str, str]:
    """The followup's Documents in GLPI: file name → sha1 of what GLPI stored."""
    state = emulator.state()
    linked = {
        r["documents_id"]
        for r in state["Document_Item"]
        if r["itemtype"] == "ITILFollowup" and r["items_id"] == followup
    }
    return {d["filename"]: d["sha1sum"] for d in state["Document"] if d["id"] in linked}


@pytest.mark.parametrize("emulator", GLPI_VERSIONS, indirect=True)
def test_files_travel_both_ways_with_their_bytes_and_what_cannot_stays_a_link(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker, ingress = start_two_way(sync_env, emulator, chatwoot, tmp_path)
    try:
        conversation = chatwoot.call("POST", "conversation", {"contact": {"email": "f@example.org"}, "content": "Hi"})[
            "conversation_id"
        ]
        wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the ticket")
        ticket = emulator.state()["Ticket"][0]["id"]

        # Chatwoot → GLPI: a photo and a PDF become Documents; a file over GLPI's document_max_size (2 MB), a
        # purged blob and a file on another host stay links with their reasons.
        photo, manual, big = _png(300 * 1024), _pdf(MIB + 12345), _pdf(3 * MIB)
        gone = f"{chatwoot.base}/rails/active_storage/blobs/redirect/eyJfcmFpbHMiOnsiZGF0YSI6nothere--0/gone.pdf"
        elsewhere = "http://192.0.2.10/internal/secret.png"
        files = [_file("screen.png", "image/png", photo), _file("manual.pdf", "application/pdf", manual)]
        files.append(_file("huge.pdf", "application/pdf", big))
        chatwoot.call(
            "POST",
            "message",
            {
                "conversation_id": conversation,
                "content": "Here is the error",
                "files": files,
                "links": [gone, elsewhere],
            },
        )
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 2, 60, what="the followup with files")
        followup = max(emulator.state()["ITILFollowup"], key=lambda f: f["id"])
        wait_until(lambda: len(documents_of(emulator, followup["id"])) == 2, 30, what="the documents linked")
        assert documents_of(emulator, followup["id"]) == {
            "screen.png": hashlib.sha1(photo).hexdigest(),
            "manual.pdf": hashlib.sha1(manual).hexdigest(),
        }
        assert len(emulator.state()["Document"]) == 2  # the big one was never sent, nothing was left behind
        content = html.unescape(html.unescape(followup["content"]))  # GLPI 10 stores it encoded
        assert "image: screen.png (attached)" in content and "file: manual.pdf (attached)" in content
        assert "huge.pdf</a> (not attached: it is larger than 2.0 MB, the most GLPI is given)" in content
        assert "gone.pdf</a> (not attached: it could not be downloaded from Chatwoot: HTTP 404)" in content
        assert (
            "192.0.2.10 is not this hook&#x27;s Chatwoot" in content
            or "192.0.2.10 is not this hook's Chatwoot" in content
        )

        # GLPI → Chatwoot: the technician's photo and PDF arrive as attachments, byte for byte; a WEBP image,
        # which WhatsApp does not deliver, stays a link with a note.
        chatwoot.call("POST", "config", {"channel": "Channel::Whatsapp"})
        wait_until(lambda: outcome_with(sync_env, "first poll, cursors set") >= 1, 60, what="the first poll")
        technician = Technician(emulator)
        answer = technician.followup(ticket, "Follow these steps")
        shot, steps = _png(200 * 1024), _pdf(700 * 1024)
        upload(technician, answer, "fix.png", "image/png", shot)
        upload(technician, answer, "steps.pdf", "application/pdf", steps)
        webp = upload(technician, answer, "diagram.webp", "image/webp", os.urandom(5000))
        documents_before = len(emulator.state()["Document"])
        wait_until(lambda: len(posted(chatwoot, conversation)) == 1, 60, what="the answer with files")
        (message,) = posted(chatwoot, conversation)
        received = {f["name"]: base64.b64decode(f["content_b64"]) for f in chatwoot.call("GET", f"files/{conversation}")
                    if f["message_id"] == message["id"]}  # fmt: skip
        assert received == {"fix.png": shot, "steps.pdf": steps}
        link = f"{emulator.api_url.removesuffix('/apirest.php')}/front/document.send.php?docid={webp}"
        assert (
            f"- diagram.webp: {link} (not attached: Whatsapp does not deliver image/webp images)" in message["content"]
        )
        # The message's own webhook (with its attachments) comes back and uploads nothing to GLPI.
        wait_until(lambda: outcome_with(sync_env, "posted by the two-way sync") >= 1, 60, what="the echo")
        assert len(emulator.state()["Document"]) == documents_before

        if not emulator.glpi11:
            _killed_during_an_upload(sync_env, worker, emulator, chatwoot, conversation)
    finally:
        ingress.stop()


def _killed_during_an_upload(
    sync_env: SyncEnv, worker: Any, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, conversation: int
) -> None:
    """kill -9 while GLPI holds an upload it then commits: the restarted worker adopts that Document."""
    emulator.faults({"path": "^Document$", "method": "POST", "kind": "late_commit", "seconds": 5, "count": 1})
    photo = _png(100 * 1024)
    before = len(emulator.state()["Document"])
    seen = len(emulator.requests())
    chatwoot.call(
        "POST",
        "message",
        {"conversation_id": conversation, "content": "Another one", "files": [_file("again.png", "image/png", photo)]},
    )
    wait_until(
        lambda: any(r["method"] == "POST" and r["path"] == "Document" for r in emulator.requests()[seen:]),
        60,
        what="the upload held by GLPI",
    )
    worker.kill()
    time.sleep(6)  # GLPI commits the upload; the worker never saw the answer
    assert len(emulator.state()["Document"]) == before + 1
    worker.start()
    wait_until(lambda: outcome_with(sync_env, "adopted existing document") >= 1, 90, what="the upload adopted")
    followup = max(emulator.state()["ITILFollowup"], key=lambda f: f["id"])
    assert "again.png (attached)" in html.unescape(followup["content"])
    wait_until(lambda: documents_of(emulator, followup["id"]) == {"again.png": hashlib.sha1(photo).hexdigest()}, 30)
    assert len(emulator.state()["Document"]) == before + 1
