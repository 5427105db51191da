"""Attachments into GLPI: the executor's StoreFile and LinkFiles against the GLPI emulator over real HTTP, the files
served by a real HTTP server standing in for Chatwoot's storage (blob redirect, then the bytes)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from app.execute import GlpiExecutor, RetryPolicy
from app.glpi import GlpiClient
from app.metrics import Metrics
from app.pipeline.files import FileTransfers
from app.settings import WorkerSettings
from app.sync.commands import Applied, FileKept, LinkFiles, Resolved, StoreFile, cautious
from tests.glpi_emulator import Emulator, Rule, build_app
from tests.harness import free_port


@dataclass
class Stage:
    emu: Emulator
    glpi: GlpiClient
    chatwoot: str
    files: dict[str, tuple[bytes, str]]
    transfers: FileTransfers
    metrics: Metrics

    def executor(self) -> GlpiExecutor:
        return GlpiExecutor(
            self.glpi, RetryPolicy(base=0.01, budget=5, late_commit_window=1.0), files=self.transfers, hook_id=7
        )

    def command(self, name: str, key: str = "1", **overrides: object) -> StoreFile:
        cmd = StoreFile(7, 3, 4000, key, f"{self.chatwoot}/blobs/{name}", name, f"[cw-file:7:4000:{key}]")
        return cautious(cmd) if overrides.get("cautious") else cmd


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    emu = Emulator()
    files: dict[str, tuple[bytes, str]] = {}

    async def blob(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "metadata.png":  # a storage (or a Chatwoot) sending the worker to the cloud's metadata service
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        if name not in files:
            return web.Response(status=404)
        raise web.HTTPFound(f"/disk/{name}")  # ActiveStorage's redirect to its storage service

    async def disk(request: web.Request) -> web.Response:
        content, mime = files[request.match_info["name"]]
        return web.Response(body=content, content_type=mime)

    storage = web.Application()
    storage.router.add_get("/blobs/{name}", blob)
    storage.router.add_get("/disk/{name}", disk)
    runners = [web.AppRunner(build_app(emu)), web.AppRunner(storage)]
    ports = [free_port(), free_port()]
    for runner, port in zip(runners, ports, strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    metrics = Metrics(CollectorRegistry())
    transfers = FileTransfers(WorkerSettings(file_max_mb=4), metrics)
    async with aiohttp.ClientSession() as http:
        glpi = GlpiClient(
            f"http://127.0.0.1:{ports[0]}/apirest.php",
            app_token="emulator-app-token",
            user_token="emulator-user-token",
            http=http,
            timeout=2.0,
        )
        yield Stage(emu, glpi, f"http://127.0.0.1:{ports[1]}", files, transfers, metrics)
    await transfers.close()
    for runner in runners:
        await runner.cleanup()


def _count(stage: Stage, direction: str, outcome: str) -> float:
    value = stage.metrics.registry.get_sample_value("cwglpi_files_total", {"direction": direction, "outcome": outcome})
    return value or 0.0


async def test_a_photo_becomes_a_document_with_its_bytes_and_is_linked_to_the_followup_once(stage: Stage) -> None:
    photo = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
    stage.files["screen.png"] = (photo, "image/png")
    outcome = await stage.executor().run(stage.command("screen.png"))
    assert isinstance(outcome, Resolved) and outcome.created
    document = stage.emu.items["Document"][outcome.glpi_id]
    assert document["sha1sum"] == hashlib.sha1(photo).hexdigest() and stage.emu.files[outcome.glpi_id] == photo
    assert document["comment"] == "[cw-file:7:4000:1]" and document["mime"] == "image/png"
    assert _count(stage, "to_glpi", "moved") == 1
    # Read back through the API after GLPI forgot the session (it expires): the client opens a new one.
    stage.emu.sessions.clear()
    back = bytearray()
    assert await stage.glpi.download_document(outcome.glpi_id, back.extend, 10**7, seconds=5) == len(photo)
    assert bytes(back) == photo

    ticket = await stage.glpi.create("Ticket", {"name": "t", "content": "c"})
    followup = await stage.glpi.create("ITILFollowup", {"itemtype": "Ticket", "items_id": ticket, "content": "x"})
    link = LinkFiles(7, 4000, followup, (outcome.glpi_id,))
    assert await stage.executor().run(link) == Applied(changed=True)
    assert await stage.executor().run(link) == Applied(changed=False)  # a replay links nothing twice
    assert len(stage.emu.items["Document_Item"]) == 1


async def test_an_upload_whose_answer_was_lost_is_found_by_its_marker_not_repeated(stage: Stage) -> None:
    stage.files["manual.pdf"] = (b"%PDF-1.7\n" + os.urandom(50_000), "application/pdf")
    # GLPI stores the document, then the connection drops before the answer: the outcome is unknown.
    stage.emu.faults.append(Rule(path="^Document$", method="POST", kind="drop"))
    outcome = await stage.executor().run(stage.command("manual.pdf"))
    assert isinstance(outcome, Resolved) and not outcome.created
    assert len(stage.emu.items["Document"]) == 1
    # A restarted worker whose intent survived looks first, and adopts it too.
    again = await stage.executor().run(stage.command("manual.pdf", cautious=True))
    assert again == Resolved(outcome.glpi_id, created=False)
    assert len(stage.emu.items["Document"]) == 1


async def test_files_glpi_would_not_keep_stay_links_with_the_reason_and_leave_nothing_behind(stage: Stage) -> None:
    # A type outside GLPI's document types: GLPI answers 201 and keeps a Document without a file.
    stage.files["tool.exe"] = (b"MZ" + os.urandom(1000), "application/octet-stream")
    kept = await stage.executor().run(stage.command("tool.exe"))
    assert kept == FileKept("GLPI did not keep the file (Filetype not allowed)")  # as GLPI 10.0.12 and 11.0.8 say
    assert stage.emu.items["Document"] == {}  # the empty Document was purged

    # Over GLPI's document_max_size (2 MB in the emulator): not even sent.
    stage.files["big.pdf"] = (b"%PDF" + os.urandom(3 * 1024 * 1024), "application/pdf")
    seen = len(stage.emu.log)
    big = await stage.executor().run(stage.command("big.pdf", key="2"))
    assert big == FileKept("it is larger than 2.0 MB, the most GLPI is given")
    assert not any(r["method"] == "POST" for r in stage.emu.log[seen:])

    # A purged blob, and a storage that does not answer.
    missing = await stage.executor().run(stage.command("nothing.png", key="3"))
    assert missing == FileKept("it could not be downloaded from Chatwoot: HTTP 404")
    closed = StoreFile(7, 3, 4000, "4", f"http://127.0.0.1:{free_port()}/x.png", "x.png", "[cw-file:7:4000:4]")
    refused = await stage.executor().run(closed)
    assert isinstance(refused, FileKept) and refused.reason.startswith("it could not be downloaded from Chatwoot")
    assert "127.0.0.1" not in refused.reason  # a data_url is signed: it never appears in reasons
    metadata = await stage.executor().run(stage.command("metadata.png", key="5"))
    assert metadata == FileKept(
        "it could not be downloaded from Chatwoot: redirected to an address files are never fetched from"
    )
    assert stage.emu.items["Document"] == {}
    assert _count(stage, "to_glpi", "too_large") == 1 and _count(stage, "to_glpi", "unreachable") == 3


async def test_a_file_of_exactly_glpis_limit_goes_and_one_byte_more_stays_a_link(stage: Stage) -> None:
    limit = stage.emu.document_max_size_mb * 1024 * 1024
    stage.files["edge.pdf"] = (b"%PDF" + os.urandom(limit - 4), "application/pdf")
    stage.files["over.pdf"] = (b"%PDF" + os.urandom(limit - 3), "application/pdf")
    edge = await stage.executor().run(stage.command("edge.pdf"))
    assert isinstance(edge, Resolved) and len(stage.emu.files[edge.glpi_id]) == limit
    over = await stage.executor().run(stage.command("over.pdf", key="2"))
    assert over == FileKept("it is larger than 2.0 MB, the most GLPI is given")
    assert len(stage.emu.items["Document"]) == 1
