"""Files, the pure part: where an attachment may be downloaded from, what each side takes, and the order of a
message's steps (uploads, then the followup that names them, then the links), replayed at every point."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from app.events import parse_envelope
from app.files.policy import MIB, FilePolicy, chatwoot_refusal, download_refusal, file_name
from app.files.transfer import SafeResolver
from app.sync.commands import CreateFollowup, FileKept, Finished, LinkFiles, Resolved, StoreFile
from app.sync.decide import decide
from app.sync.record import record, with_intent
from app.sync.state import SyncContext, SyncView
from app.twoway.plan import ChatwootAction, action_for
from tests.conftest import envelope, load_example
from tests.unit.test_decide import MARTA, TICKET, hook

CHATWOOT = "https://chat.northwind.example"
CTX = SyncContext(chatwoot_base_url=CHATWOOT, allow_http=True)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (f"{CHATWOOT}/rails/active_storage/blobs/redirect/x/a.png", True),
        ("https://CHAT.northwind.example:443/rails/x.png", True),
        ("http://chat.northwind.example/rails/x.png", False),  # another scheme is another origin
        ("https://chat.northwind.example:8443/x.png", False),
        ("https://chat.northwind.example.evil.test/x.png", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("file:///etc/passwd", False),
        ("https://files.example/x.png", True),  # named in GLPI_SYNC_FILE_HOSTS
        ("http://169.254.169.254/latest/meta-data/iam", False),  # named too, but cloud metadata: never
        ("http://[fd00:ec2::254]/latest/", False),
        ("http://[::ffff:169.254.169.254]/", False),
    ],
)
def test_only_the_hooks_chatwoot_and_named_hosts_are_downloaded_from(url: str, allowed: bool) -> None:
    policy = FilePolicy(
        extra_hosts=frozenset({"files.example", "169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"})
    )
    assert (download_refusal(url, (None, CHATWOOT), policy) is None) is allowed


async def test_names_resolving_to_metadata_addresses_are_refused() -> None:
    with pytest.raises(OSError, match="link-local"):
        await SafeResolver().resolve("169.254.169.254", 80)
    assert [a["host"] for a in await SafeResolver().resolve("127.0.0.1", 80)] == ["127.0.0.1"]


def test_what_chatwoot_and_its_channels_take() -> None:
    assert chatwoot_refusal("Channel::WebWidget", "image/webp", 1000, 20 * MIB) is None
    assert chatwoot_refusal("Channel::Whatsapp", "image/jpeg", 1000, 20 * MIB) is None
    assert chatwoot_refusal("Channel::Whatsapp", "image/webp", 1000, 20 * MIB) == (
        "Whatsapp does not deliver image/webp images"
    )
    assert chatwoot_refusal("Channel::Whatsapp", "image/png", 6 * MIB, 20 * MIB) == (
        "Whatsapp delivers images up to 5.0 MB (this one is 6.0 MB)"
    )
    assert chatwoot_refusal("Channel::Whatsapp", "application/pdf", 30 * MIB, 100 * MIB) is None
    assert chatwoot_refusal(None, "application/pdf", 41 * MIB, 100 * MIB) == "it is 41 MB, over the limit of 40 MB"
    assert chatwoot_refusal(None, "application/pdf", 3 * MIB, 2 * MIB) == "it is 3.0 MB, over the limit of 2.0 MB"


def test_file_names_keep_no_path_and_no_control_characters() -> None:
    assert file_name("../../etc/passwd", None) == "_.._etc_passwd"
    assert file_name(None, "https://c.example/blobs/x--y/scan%20one.pdf?disposition=inline") == "scan%20one.pdf"
    assert file_name("a\x00b\r\nc.png", None) == "a_b_c.png"
    assert file_name("", "https://c.example/blobs/", "image/png") == "blobs.png"
    assert file_name(None, None, "image/jpeg") == "attachment.jpg"


def _message(attachments: list[dict[str, object]]) -> object:
    payload = load_example("message_created", attachments=attachments)
    return parse_envelope(orjson.dumps(envelope("message_created", payload)))


def _attachment(n: int, kind: str = "image", host: str = CHATWOOT) -> dict[str, object]:
    url = f"{host}/rails/active_storage/blobs/redirect/s{n}--x/file{n}.{'png' if kind == 'image' else 'pdf'}"
    return {"id": 900 + n, "message_id": 4412, "file_type": kind, "account_id": 7, "data_url": url}


def test_uploads_come_first_then_the_followup_names_them_then_the_links_whatever_is_replayed() -> None:
    event = _message(
        [
            _attachment(1),
            _attachment(2, "file"),
            _attachment(3, host="https://elsewhere.example"),
            {"id": 990, "file_type": "location", "data_url": "https://maps.example/?q=1", "fallback_title": "Office"},
        ]
    )
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET)
    first = decide(view, event, CTX)  # type: ignore[arg-type]
    assert isinstance(first, StoreFile) and first.key == "901" and first.marker == "[cw-file:7:4412:901]"
    assert not first.lookup_first
    # A crash after the intent: the replay looks for the Document before uploading again.
    pending = with_intent(view, first, attempt_at=100.0)
    again = decide(pending, event, CTX)  # type: ignore[arg-type]
    assert isinstance(again, StoreFile) and again.lookup_first and again.not_before == 100.0 + CTX.late_commit_window
    view = record(pending, first, Resolved(55), 101.0)
    assert view.message is not None and view.message.file_pending is None
    second = decide(view, event, CTX)  # type: ignore[arg-type]
    assert isinstance(second, StoreFile) and second.key == "902"
    view = record(view, second, FileKept("it could not be downloaded from Chatwoot: HTTP 404"), 102.0)
    followup = decide(view, event, CTX)  # type: ignore[arg-type]
    assert isinstance(followup, CreateFollowup)
    content = followup.input["content"]
    assert "image: file1.png (attached)" in content
    assert "file2.pdf</a> (not attached: it could not be downloaded from Chatwoot: HTTP 404)" in content
    assert "file3.png</a> (not attached: elsewhere.example is not this hook's Chatwoot" in content
    assert '<a href="https://maps.example/?q=1">location: Office</a>' in content
    # The same content on a replay (the followup's marker is looked for, its text must not drift).
    assert decide(view, event, CTX).input["content"] == content  # type: ignore[union-attr, arg-type]
    view = record(view, followup, Resolved(77), 103.0)
    link = decide(view, event, CTX)  # type: ignore[arg-type]
    assert link == LinkFiles(7, 4412, 77, (55,))
    view = record(view, link, Resolved(0), 104.0)  # any outcome: the links are there
    done = decide(view, event, CTX)  # type: ignore[arg-type]
    assert isinstance(done, Finished) and done.reason == "followup exists"


def test_files_off_or_past_the_per_message_number_stay_links() -> None:
    event = _message([_attachment(1), _attachment(2), _attachment(3)])
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET)
    off = decide(view, event, replace(CTX, files=FilePolicy(enabled=False)))  # type: ignore[arg-type]
    assert isinstance(off, CreateFollowup) and "(not attached" not in off.input["content"]
    two = replace(CTX, files=FilePolicy(max_per_message=2))
    steps = []
    for _ in range(4):
        step = decide(view, event, two)  # type: ignore[arg-type]
        if not isinstance(step, StoreFile):
            break
        steps.append(step.key)
        view = record(view, step, Resolved(len(steps)), 0.0)
    assert steps == ["901", "902"]
    assert isinstance(step, CreateFollowup)
    assert "(not attached: only the first 2 files of a message are attached)" in step.input["content"]


def test_a_technicians_files_posted_as_attachments_are_not_listed_again() -> None:
    payload = {
        "itemtype": "ITILFollowup",
        "item_id": 5,
        "content": "See the screenshots",
        "attachments": [
            {"name": "a.png", "url": "https://glpi/front/document.send.php?docid=1", "attached": True},
            {"name": "b.webp", "url": "https://glpi/front/document.send.php?docid=2", "reason": "no webp"},
        ],
    }
    action = action_for("glpi_followup_added", payload, private_followups="skip", resolve_on_solution=True)
    assert isinstance(action, ChatwootAction)
    link = "https://glpi/front/document.send.php?docid=2"
    assert action.content == f"See the screenshots\n\nAttachments:\n- b.webp: {link} (not attached: no webp)"
    only_files = {**payload, "content": "", "attachments": payload["attachments"][:1]}  # type: ignore[index]
    assert isinstance(
        action_for("glpi_followup_added", only_files, private_followups="skip", resolve_on_solution=True),
        ChatwootAction,
    )
