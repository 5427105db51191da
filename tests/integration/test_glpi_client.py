"""GlpiClient and GlpiExecutor against the GLPI emulator served over real HTTP (in process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from app.execute import GlpiExecutor, RetryPolicy
from app.glpi import (
    Criterion,
    GlpiAuthError,
    GlpiClient,
    GlpiNotFoundError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiUnexpectedResponseError,
)
from app.glpi.limiter import AdaptiveLimit, RequestLimiter
from app.sync.commands import (
    Applied,
    ContactSnapshot,
    CreateFollowup,
    CreateTicket,
    EnsureUser,
    EnsureUserEmail,
    Lookup,
    Resolved,
    SearchCriterion,
    UpdateItem,
)
from tests.glpi_emulator import FIRST_USER_ID, Emulator, Rule, build_app
from tests.harness import free_port


@dataclass
class Served:
    emu: Emulator
    base: str
    http: aiohttp.ClientSession

    def client(self, **overrides: object) -> GlpiClient:
        options: dict[str, object] = {
            "app_token": "emulator-app-token",
            "user_token": "emulator-user-token",
            "timeout": 2.0,
        }
        options.update(overrides)
        return GlpiClient(self.base, http=self.http, **options)  # type: ignore[arg-type]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    emu = Emulator()
    runner = web.AppRunner(build_app(emu))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        # A base with a path and a trailing slash: the client must keep apirest.php (prior defect #1).
        yield Served(emu, f"http://127.0.0.1:{port}/apirest.php/", http)
    await runner.cleanup()


async def test_a_small_glpi_gets_few_requests_at_once_however_many_callers_there_are(served: Served) -> None:
    """40 callers share one client against a GLPI of 3 php-fpm workers: the limit settles low, nothing is lost."""
    served.emu.latency, served.emu.capacity = 0.02, 3
    client = served.client(limiter=RequestLimiter(AdaptiveLimit(maximum=32, initial=8)))
    ticket = await client.create("Ticket", {"name": "t", "content": "c"})

    async def caller(n: int) -> None:
        for i in range(10):
            await client.create("ITILFollowup", {"itemtype": "Ticket", "items_id": ticket, "content": f"{n}-{i}"})

    await asyncio.gather(*(caller(n) for n in range(40)))
    followups = [f["content"] for f in served.emu.items["ITILFollowup"].values()]
    assert sorted(followups) == sorted(f"{n}-{i}" for n in range(40) for i in range(10))
    assert served.emu.peak_inflight <= 32  # never more than the operator's ceiling
    limiter = client.limiter
    assert limiter is not None and limiter.inflight == 0
    assert limiter.limit.current < 8  # queueing seen: it shrank, and did not grow toward 32


def _paths(emu: Emulator) -> list[str]:
    return [entry["path"] for entry in emu.log]


async def test_one_session_is_reused_and_killed(served: Served) -> None:
    client = served.client()
    await client.create("User", {"name": "jane@ext.example"})
    await client.search_ids("User", [Criterion(1, "contains", "^jane@ext.example$")])
    assert _paths(served.emu).count("initSession") == 1
    token = next(iter(served.emu.sessions))
    await client.close()
    assert token not in served.emu.sessions
    assert _paths(served.emu)[-1] == "killSession"


async def test_expired_session_is_reinitialised_once_and_the_call_replayed(served: Served) -> None:
    client = served.client()
    await client.create("User", {"name": "a@b.example"})
    served.emu.sessions.clear()
    user_id = await client.create("User", {"name": "c@d.example"})
    assert user_id > 0
    assert _paths(served.emu).count("initSession") == 2


async def test_session_that_keeps_failing_raises_after_one_reinit(served: Served) -> None:
    served.emu.faults.append(Rule(path="^User$", method="POST", kind="expire_session", count=-1))
    with pytest.raises(GlpiAuthError) as caught:
        await served.client().create("User", {"name": "x@y.example"})
    assert caught.value.code == "ERROR_SESSION_TOKEN_INVALID"
    assert _paths(served.emu).count("initSession") == 2


async def test_a_status_update_glpi_carries_out_late_never_overwrites_the_next_one(served: Served) -> None:
    """PUT status=5 times out while PHP carries it out later; the conversation's next status (2) must stay last."""
    client = served.client(timeout=0.3)
    ticket = await client.create("Ticket", {"name": "t", "content": "c"})
    served.emu.faults.append(Rule(path=r"^Ticket/\d+$", method="PUT", kind="late_commit", seconds=1.0, count=1))
    executor = GlpiExecutor(client, RetryPolicy(base=0.01, budget=5, late_commit_window=1.5))
    await executor.run(UpdateItem("Ticket", ticket, {"status": 5}))
    await executor.run(UpdateItem("Ticket", ticket, {"status": 2}))
    await asyncio.sleep(1.2)  # past the moment the held PUT was carried out
    assert served.emu.items["Ticket"][ticket]["status"] == 2


async def test_a_session_lost_twice_in_a_row_is_retried_not_given_up(served: Served) -> None:
    """GLPI drops the session again right after the re-init (sessions expiring fast): the executor tries again."""
    served.emu.faults.append(Rule(path="^User$", method="POST", kind="expire_session", count=2))
    executor = GlpiExecutor(served.client(), RetryPolicy(base=0.01, budget=5))
    created = await executor.run(_ensure_user())
    assert isinstance(created, Resolved) and created.created
    assert len([u for u in served.emu.items["User"].values() if u["id"] >= FIRST_USER_ID]) == 1


@pytest.mark.parametrize(
    ("overrides", "setup", "code"),
    [
        ({"app_token": "wrong"}, {}, "ERROR_WRONG_APP_TOKEN_PARAMETER"),
        ({"app_token": None}, {}, "ERROR_APP_TOKEN_PARAMETERS_MISSING"),
        ({"user_token": "wrong"}, {}, "ERROR_GLPI_LOGIN_USER_TOKEN"),
        ({}, {"enable_api": False}, "ERROR"),
    ],
)
async def test_broken_credentials_are_auth_errors(
    served: Served, overrides: dict[str, object], setup: dict[str, object], code: str
) -> None:
    for key, value in setup.items():
        setattr(served.emu, key, value)
    with pytest.raises(GlpiAuthError) as caught:
        await served.client(**overrides).open()
    assert caught.value.code == code
    assert "wrong" not in str(caught.value) or code == "ERROR_WRONG_APP_TOKEN_PARAMETER"


async def test_search_semantics(served: Served) -> None:
    client = served.client()
    assert await client.search_ids("User", [Criterion(5, "contains", "^nobody@x.example$")]) == []
    uid = await client.create("User", {"name": "jane@ext.example", "_useremails": ["Jane@Ext.example"]})
    assert await client.search_ids("User", [Criterion(5, "contains", "^jane@ext.example$")]) == [uid]
    assert await client.search_ids("User", [Criterion(5, "equals", "jane@ext.example")]) == []  # GLPI 10 quirk
    assert await client.search_ids("User", [Criterion(5, "contains", "^ane@ext.example$")]) == []
    with pytest.raises(GlpiRejectedError, match="Bad field ID"):
        await client.search_ids("User", [Criterion(999, "contains", "x")])


async def test_text_round_trip_and_search_decoding(served: Served) -> None:
    client = served.client()
    tid = await client.create("Ticket", {"name": "A & B <x>", "content": "<p>[cw:1/2]</p>"})
    stored = served.emu.items["Ticket"][tid]
    assert stored["name"] == "A &#38; B &#60;x&#62;"
    assert (await client.get_item("Ticket", tid))["name"] == "A & B <x>"
    rows = await client.search("Ticket", [Criterion(21, "contains", "[cw:1/2]")])
    assert rows[0]["1"] == "A & B <x>"
    long_name = "&" * 300
    tid2 = await client.create("Ticket", {"name": long_name, "content": "x"})
    assert len(served.emu.items["Ticket"][tid2]["name"]) == 255


async def test_missing_items(served: Served) -> None:
    client = served.client()
    with pytest.raises(GlpiNotFoundError):
        await client.get_item("Ticket", 999)
    with pytest.raises(GlpiNotFoundError):
        await client.update("Ticket", 999, {"status": 5})
    with pytest.raises(GlpiNotFoundError):
        await client.get_subitems("Ticket", 999, "ITILFollowup")


async def test_subitems_follow_206_pages(served: Served) -> None:
    client = served.client()
    tid = await client.create("Ticket", {"name": "t", "content": "c"})
    for n in range(7):
        await client.create("ITILFollowup", {"itemtype": "Ticket", "items_id": tid, "content": f"f{n}"})
    rows = await client.get_subitems("Ticket", tid, "ITILFollowup", page_size=3)
    assert [r["content"] for r in rows] == [f"f{n}" for n in range(7)]


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        (Rule(path="^User$", method="POST", kind="status", status=503), "HTTP_503"),
        (Rule(path="^User$", method="POST", kind="status", status=500), "ERROR_SQL"),
        (Rule(path="^User$", method="POST", kind="retry_after", retry_after=3), "ERROR"),
        (Rule(path="^User$", method="POST", kind="timeout", seconds=5), "TIMEOUT"),
    ],
)
async def test_transient_failures_are_retryable(served: Served, rule: Rule, code: str) -> None:
    served.emu.faults.append(rule)
    client = served.client(timeout=0.5)
    await client.open()
    with pytest.raises(GlpiRetryableError) as caught:
        await client.create("User", {"name": "q@r.example"})
    assert caught.value.code == code
    if rule.kind == "retry_after":
        assert caught.value.retry_after == 3


# ---------------------------------------------------------------------------------------------- executor


def _snap() -> ContactSnapshot:
    return ContactSnapshot(7, 318, "Jane Doe", None, "jane@ext.example")


def _ensure_user(login: str = "jane@ext.example") -> EnsureUser:
    lookup = Lookup((SearchCriterion(5, "contains", "^jane@ext.example$"),), "email")
    return EnsureUser((lookup,), {"name": login, "_useremails": ["jane@ext.example"]}, login, _snap())


async def test_ensure_user_finds_before_creating(served: Served) -> None:
    executor = GlpiExecutor(served.client())
    created = await executor.run(_ensure_user())
    assert created == Resolved(created.glpi_id, created=True)  # type: ignore[union-attr]
    again = await executor.run(_ensure_user())
    assert again == Resolved(created.glpi_id, created=False)  # type: ignore[union-attr]
    assert len([u for u in served.emu.items["User"].values() if u["id"] >= FIRST_USER_ID]) == 1


async def test_ensure_user_adopts_an_existing_login(served: Served) -> None:
    client = served.client()
    existing = await client.create("User", {"name": "jdoe"})
    cmd = EnsureUser((), {"name": "jdoe"}, "jdoe", _snap())
    assert await GlpiExecutor(client).run(cmd) == Resolved(existing, created=False)


async def test_ensure_user_email_never_duplicates(served: Served) -> None:
    client = served.client()
    uid = await client.create("User", {"name": "u1", "_useremails": ["one@x.example"]})
    executor = GlpiExecutor(client)
    assert await executor.run(EnsureUserEmail(uid, "ONE@x.example", _snap())) == Applied(changed=False)
    assert await executor.run(EnsureUserEmail(uid, "two@x.example", _snap())) == Applied(changed=True)
    assert await executor.run(EnsureUserEmail(uid, "two@x.example", _snap())) == Applied(changed=False)
    assert sorted(e["email"] for e in served.emu.items["UserEmail"].values()) == [
        "one@x.example",
        "two@x.example",
    ]


async def test_ticket_and_followup_lookups_find_what_a_lost_reply_created(served: Served) -> None:
    client = served.client()
    executor = GlpiExecutor(client)
    ticket = CreateTicket({"name": "t", "content": "<p>[cw:7/57]</p>"}, "[cw:7/57]", 7, 57, "open")
    first = await executor.run(ticket)
    assert isinstance(first, Resolved)
    replay = CreateTicket(ticket.input, ticket.marker, 7, 57, "open", lookup_first=True)
    assert await executor.run(replay) == Resolved(first.glpi_id, created=False)
    follow = CreateFollowup(
        first.glpi_id,
        {"itemtype": "Ticket", "items_id": first.glpi_id, "content": "<p>hi</p><p>[cw-msg:1]</p>"},
        "[cw-msg:1]",
        7,
        57,
        1,
    )
    made = await executor.run(follow)
    assert isinstance(made, Resolved)
    replayed = CreateFollowup(follow.ticket_id, follow.input, follow.marker, 7, 57, 1, lookup_first=True)
    assert await executor.run(replayed) == Resolved(made.glpi_id, created=False)
    assert len(served.emu.items["Ticket"]) == 1
    assert len(served.emu.items["ITILFollowup"]) == 1


async def test_executor_retries_transient_errors_within_budget(served: Served) -> None:
    # GLPI's own 500 (ERROR_SQL): PHP is done with the request, so the retry only looks once before creating.
    served.emu.faults.append(Rule(path="^User$", method="POST", kind="status", status=500, count=2))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    retried: list[str] = []
    executor = GlpiExecutor(
        served.client(),
        RetryPolicy(base=0.01, budget=5, sleep=fake_sleep, rand=lambda: 1.0),
        on_retry=retried.append,
    )
    assert isinstance(await executor.run(_ensure_user()), Resolved)
    assert retried == ["ERROR_SQL", "ERROR_SQL"]
    assert sleeps == [0.01, 0.02]
    assert len([u for u in served.emu.items["User"].values() if u["name"] == "jane@ext.example"]) == 1


async def test_executor_honours_retry_after_and_gives_up_at_the_budget(served: Served) -> None:
    served.emu.faults.append(Rule(path="^User$", method="POST", kind="retry_after", retry_after=2, count=-1))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    executor = GlpiExecutor(served.client(), RetryPolicy(base=0.01, budget=0.5, sleep=fake_sleep))
    with pytest.raises(GlpiRetryableError):
        await executor.run(_ensure_user())
    assert sleeps == []  # Retry-After of 2 s does not fit a 0.5 s budget: give up at once, the worker decides


async def test_rejections_are_not_retried(served: Served) -> None:
    executor = GlpiExecutor(served.client())
    bad = CreateFollowup(12345, {"itemtype": "Ticket", "items_id": 12345, "content": "x"}, "[cw-msg:9]", 7, 1, 9)
    with pytest.raises(GlpiRejectedError):
        await executor.run(bad)
    assert _paths(served.emu).count("ITILFollowup") == 1


@pytest.mark.parametrize("path", ["^Ticket$", "^ITILFollowup$", "^User$"])
async def test_a_reply_lost_after_the_write_never_duplicates(served: Served, path: str) -> None:
    client = served.client()
    ticket_id = await client.create("Ticket", {"name": "base", "content": "<p>[cw:7/1]</p>"})
    served.emu.faults.append(Rule(path=path, method="POST", kind="drop", count=1))
    executor = GlpiExecutor(client, RetryPolicy(base=0.01, budget=5))
    commands = {
        "^Ticket$": CreateTicket({"name": "t", "content": "<p>[cw:7/99]</p>"}, "[cw:7/99]", 7, 99, "open"),
        "^ITILFollowup$": CreateFollowup(
            ticket_id,
            {"itemtype": "Ticket", "items_id": ticket_id, "content": "<p>[cw-msg:5]</p>"},
            "[cw-msg:5]",
            7,
            1,
            5,
        ),
        "^User$": EnsureUser((), {"name": "chatwoot-7-5"}, "chatwoot-7-5", _snap()),
    }
    before = {name: len(items) for name, items in served.emu.items.items()}
    outcome = await executor.run(commands[path])
    assert isinstance(outcome, Resolved)
    assert outcome.created is False  # the retry found what the lost attempt had created
    itemtype = path.strip("^$")
    assert len(served.emu.items[itemtype]) == before[itemtype] + 1


# ------------------------------------------------------------------------------------- creates GLPI finishes late


def _ticket(conversation: int = 61) -> CreateTicket:
    marker = f"[cw:7/{conversation}]"
    return CreateTicket({"name": "t", "content": f"<p>{marker}</p>"}, marker, 7, conversation, "open")


def _with_marker(emu: Emulator, marker: str) -> list[dict[str, object]]:
    return [t for t in emu.items["Ticket"].values() if marker in str(t["content"]) and not t["is_deleted"]]


@pytest.mark.parametrize("answer", ["504", "timeout"])
async def test_a_create_glpi_commits_after_the_client_gave_up_is_adopted_once(served: Served, answer: str) -> None:
    """A proxy's 504, or our own timeout, while PHP commits seconds later: one ticket, found, not made twice."""
    served.emu.faults.append(Rule(path="^Ticket$", method="POST", kind="late_commit", seconds=1.5, answer=answer))
    intents: list[float] = []

    async def before_post(cmd: object, at: float) -> None:
        intents.append(at)

    executor = GlpiExecutor(served.client(timeout=0.5), RetryPolicy(base=0.05, budget=5, late_commit_window=6))
    outcome = await executor.run(_ticket(), before_post)
    assert isinstance(outcome, Resolved)
    assert outcome.created is False  # the late commit was found while waiting, then adopted
    assert len(_with_marker(served.emu, "[cw:7/61]")) == 1
    assert len(intents) == 1  # one POST only: no second one while the first could still land
    assert _paths(served.emu).count("Ticket") == 1


async def test_no_second_post_before_the_window_ends(served: Served) -> None:
    """A 504 and no commit: the retry waits the window (looking meanwhile), then creates exactly one ticket."""
    served.emu.faults.append(Rule(path="^Ticket$", method="POST", kind="status", status=504, count=1))
    posts: list[float] = []

    async def before_post(cmd: object, at: float) -> None:
        posts.append(at)

    executor = GlpiExecutor(served.client(), RetryPolicy(base=0.05, budget=5, late_commit_window=1.5, verify_delay=0))
    outcome = await executor.run(_ticket(62), before_post)
    assert isinstance(outcome, Resolved) and outcome.created
    assert len(posts) == 2 and posts[1] - posts[0] >= 1.5
    assert len(_with_marker(served.emu, "[cw:7/62]")) == 1
    searches = [r for r in served.emu.log if r["path"] == "search/Ticket"]
    assert len(searches) >= 2  # it kept looking for the first attempt's ticket while it waited


async def test_a_commit_later_than_the_window_is_removed_after_the_retry(served: Served) -> None:
    """GLPI slower than the window: the retry makes a second ticket, the check afterwards trashes the late one."""
    served.emu.faults.append(Rule(path="^Ticket$", method="POST", kind="late_commit", seconds=1.0, answer="504"))
    removed: list[str] = []
    executor = GlpiExecutor(
        served.client(),
        RetryPolicy(base=0.05, budget=5, late_commit_window=0.3, verify_delay=1.5),
        on_duplicate_removed=removed.append,
    )
    outcome = await executor.run(_ticket(63))
    assert isinstance(outcome, Resolved) and outcome.created
    kept = _with_marker(served.emu, "[cw:7/63]")
    assert [t["id"] for t in kept] == [outcome.glpi_id]  # exactly one left: the one the sync recorded
    assert removed == ["Ticket"]
    trashed = [t for t in served.emu.items["Ticket"].values() if t["is_deleted"]]
    assert len(trashed) == 1  # in GLPI's trash, not purged: nothing is lost if this was wrong


async def test_a_refused_connection_is_certain_and_creates_without_waiting() -> None:
    """Nothing listens: the request cannot have been made, so no late-commit wait applies."""
    async with aiohttp.ClientSession() as http:
        client = GlpiClient(f"http://127.0.0.1:{free_port()}/apirest.php", user_token="u", http=http, timeout=1)
        with pytest.raises(GlpiRetryableError) as caught:
            await client.create("Ticket", {"name": "x"})
    assert not caught.value.uncertain
    assert caught.value.code == "CONNECTION"
    assert "cannot connect to 127.0.0.1:" in caught.value.message


async def test_a_proxy_page_with_status_200_is_never_read_as_no_results(served: Served) -> None:
    """A captive portal answering 200 to a search must not look like "nothing found" (a create would follow)."""
    client = served.client()
    served.emu.faults.append(
        Rule(path="^search/User$", method=None, kind="html", status=200, title="Please sign in", count=1)
    )
    with pytest.raises(GlpiUnexpectedResponseError, match="Please sign in"):
        await client.search_ids("User", [Criterion(5, "contains", "^a@b.c$")])
