"""Fault-injection scenarios on real Kafka, real worker processes and GLPI emulators; each prints its figures.

``make chaos`` runs the long form (``python -m tests.chaos``); ``tests/e2e/test_chaos.py`` runs a short form
inside ``make test``. Every scenario ends by counting, in GLPI, users per contact, tickets per conversation and
followups per message (by their markers) and the final ticket statuses: duplicates and missing must both be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.faust_consumer import FETCHER_MISSING
from tests.conftest import SyncEnv, envelope, hook_envelope, load_example
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import EmulatorProcess, KafkaBroker, wait_until

#: Expected GLPI status: untouched conversations stay New (1); a reopened one is Processing (2).
FINAL_STATUS = {"new": 1, "open": 2, "resolved": 5, "pending": 4}


@dataclass
class Workload:
    """Hooks × conversations × messages, with the GLPI objects they must produce."""

    hooks: int
    conversations: int
    messages: int
    events: list[dict[str, Any]] = field(default_factory=list)
    logins: dict[int, set[str]] = field(default_factory=dict)
    tickets: dict[str, int] = field(default_factory=dict)  # marker -> expected final status
    followups: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        hooks: int,
        conversations: int,
        messages: int,
        first_hook: int = 1,
        contacts: int | None = None,
        shuffle: random.Random | None = None,
    ) -> Workload:
        """``contacts``: conversations share that many contacts per hook (default: one contact each).
        ``shuffle``: the conversations of a hook interleave at random, each keeping its own order."""
        work = cls(hooks, conversations, messages)
        per_hook: list[list[dict[str, Any]]] = []
        for hook in range(first_hook, first_hook + hooks):
            by_conversation: list[list[dict[str, Any]]] = []
            work.logins[hook] = set()
            for conv in range(1, conversations + 1):
                sequence: list[dict[str, Any]] = []
                by_conversation.append(sequence)
                person = conv if contacts is None else (conv - 1) % contacts + 1
                contact_id = hook * 1000 + person
                email = f"c{hook}-{person}@chaos.example"
                work.logins[hook].add(email)
                body = load_example("conversation_created", id=conv)
                sender = body["meta"]["sender"]
                sender.update(id=contact_id, email=email, name=f"Chaos {hook} {person}", phone_number=None)
                body["messages"][0].update(id=hook * 1_000_000 + conv * 1000, sender=dict(sender))
                sequence.append(envelope("conversation_created", body, hook, hook))
                work.followups.add(str(hook * 1_000_000 + conv * 1000))  # the message it carries
                for n in range(1, messages + 1):
                    msg_id = hook * 1_000_000 + conv * 1000 + n
                    msg = load_example("message_created", id=msg_id, content=f"hook {hook} conv {conv} msg {n}")
                    msg["account"]["id"] = hook
                    msg["conversation"]["id"] = conv
                    msg["conversation"]["meta"]["sender"] = dict(sender)
                    msg["sender"] = {**msg["sender"], "id": contact_id, "email": email}
                    sequence.append(envelope("message_created", msg, hook, hook))
                    work.followups.add(str(msg_id))
                final = "new"
                if conv % 2 == 0:
                    final = "resolved"
                    sequence.append(_status(conv, sender, "resolved", hook))
                if conv % 3 == 0:
                    sequence.append(_status(conv, sender, "resolved", hook))
                    final = "open"
                    sequence.append(_status(conv, sender, "open", hook))
                work.tickets[f"[cw:{hook}/{conv}]"] = FINAL_STATUS[final]
            per_hook.append(_interleave(by_conversation, shuffle))
        # Interleave the hooks round-robin; each hook keeps its own order.
        while any(per_hook):
            for sequence in per_hook:
                if sequence:
                    work.events.append(sequence.pop(0))
        return work

    def hook_events(self, api_urls: dict[int, str]) -> list[dict[str, Any]]:
        return [hook_envelope(url, hook_id=hook, account_id=hook) for hook, url in api_urls.items()]


def _interleave(sequences: list[list[dict[str, Any]]], rng: random.Random | None) -> list[dict[str, Any]]:
    """One after the other, or (with ``rng``) mixed at random with each sequence's own order kept."""
    if rng is None:
        return [event for sequence in sequences for event in sequence]
    queues = [list(sequence) for sequence in sequences if sequence]
    mixed: list[dict[str, Any]] = []
    while queues:
        queue = rng.choice(queues)
        mixed.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return mixed


def _status(conv: int, sender: dict[str, Any], status: str, hook: int) -> dict[str, Any]:
    body = load_example("conversation_status_changed", id=conv, status=status)
    body["meta"]["sender"] = dict(sender)
    body["messages"] = []
    return envelope("conversation_status_changed", body, hook, hook)


@dataclass
class Verdict:
    users: int = 0
    tickets: int = 0
    followups: int = 0
    duplicates: int = 0
    missing: int = 0
    wrong_status: int = 0
    timed_out: bool = False
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.wrong_status == 0 and not self.timed_out


def _live_tickets(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Tickets outside GLPI's trash (a late duplicate the sync removed sits in the trash)."""
    return [t for t in state["Ticket"] if not t.get("is_deleted")]


def verify(work: Workload, states: list[dict[str, Any]], hooks: set[int] | None = None) -> Verdict:
    """Count what GLPI holds against what the workload must produce.

    A conversation whose ticket was closed (or refused) goes on in a new ticket linked to it (``Ticket_Ticket``):
    the replaced ticket is not a duplicate, and the final status is the newest ticket's.
    """
    verdict = Verdict()
    wanted_hooks = hooks if hooks is not None else set(work.logins)
    logins = [u["name"] for state in states for u in state["User"] if u["id"] >= FIRST_USER_ID]
    tickets = [t for state in states for t in _live_tickets(state)]
    contents = [html.unescape(t["content"]) for t in tickets]
    replaced = {(link["tickets_id_1"], link["tickets_id_2"]) for s in states for link in s.get("Ticket_Ticket", [])}
    markers = [
        html.unescape(f["content"]).split("[cw-msg:")[1].split("]")[0] for s in states for f in s["ITILFollowup"]
    ]
    for hook in wanted_hooks:
        for login in work.logins[hook]:
            count = logins.count(login)
            verdict.users += min(count, 1)
            verdict.duplicates += max(0, count - 1)
            if count == 0:
                verdict.missing += 1
                verdict.details.append(f"missing user {login}")
    for marker, status in work.tickets.items():
        if int(marker[4:].split("/")[0]) not in wanted_hooks:
            continue
        found = [t for t, c in zip(tickets, contents, strict=True) if marker in c]
        ids = {t["id"] for t in found}
        continued = {old for new, old in replaced if new in ids and old in ids}
        live = [t for t in found if t["id"] not in continued]
        verdict.tickets += min(len(live), 1)
        verdict.duplicates += max(0, len(live) - 1)
        if not live:
            verdict.missing += 1
            verdict.details.append(f"missing ticket {marker}")
        elif live[-1]["status"] != status:
            verdict.wrong_status += 1
            verdict.details.append(f"ticket {marker} status {live[-1]['status']} != {status}")
        elif len(live) > 1:
            verdict.details.append(f"duplicate ticket {marker}: {sorted(ids)}")
    for marker in work.followups:
        if int(marker) // 1_000_000 not in wanted_hooks:
            continue
        count = markers.count(marker)
        verdict.followups += min(count, 1)
        verdict.duplicates += max(0, count - 1)
        if count == 0:
            verdict.missing += 1
            verdict.details.append(f"missing followup {marker}")
        elif count > 1:
            verdict.details.append(f"duplicate followup {marker}")
    return verdict


def expected_counts(work: Workload, hooks: set[int] | None = None) -> tuple[int, int, int]:
    wanted = hooks if hooks is not None else set(work.logins)
    users = sum(len(work.logins[h]) for h in wanted)
    tickets = sum(1 for m in work.tickets if int(m[4:].split("/")[0]) in wanted)
    followups = sum(1 for m in work.followups if int(m) // 1_000_000 in wanted)
    return users, tickets, followups


def wait_complete(
    work: Workload, emulators: list[EmulatorProcess], timeout: float, hooks: set[int] | None = None
) -> Verdict:
    users, tickets, followups = expected_counts(work, hooks)

    def done() -> bool:
        verdict = verify(work, [e.state() for e in emulators], hooks)
        return (
            verdict.users == users
            and verdict.tickets == tickets
            and verdict.followups == followups
            and (verdict.wrong_status == 0)
        )

    try:
        wait_until(done, timeout, interval=1.0, what="the whole workload in GLPI")
    except AssertionError as exc:
        # Report what is wrong rather than a bare timeout: the caller asserts on the verdict and prints details.
        verdict = verify(work, [e.state() for e in emulators], hooks)
        verdict.timed_out = True
        verdict.details.insert(0, f"{exc}; GLPI holds {verdict.users}/{verdict.tickets}/{verdict.followups}")
        return verdict
    return verify(work, [e.state() for e in emulators], hooks)


def publish_in_background(env: SyncEnv, events: list[dict[str, Any]], chunks: int, pause: float) -> threading.Thread:
    def run() -> None:
        size = max(1, len(events) // chunks)
        for start in range(0, len(events), size):
            stamped = [{**e, "occurred_at": datetime.now(tz=UTC).isoformat()} for e in events[start : start + size]]
            for _attempt in range(60):  # the broker may be restarting: a producer keeps trying, as Chatwoot's would
                try:
                    env.publish(stamped)
                    break
                except Exception:
                    time.sleep(1.0)
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def tally(work: Workload, verdict: Verdict) -> dict[str, Any]:
    """The figures every scenario reports: what GLPI holds against what the workload must produce."""
    return {
        "users / tickets / followups": f"{verdict.users} / {verdict.tickets} / {verdict.followups}",
        "expected": " / ".join(str(n) for n in expected_counts(work)),
        "duplicates": verdict.duplicates,
        "missing": verdict.missing,
        "wrong final statuses": verdict.wrong_status,
        "_verdict": verdict,
    }


def report(title: str, figures: dict[str, Any]) -> str:
    lines = [f"== {title}"] + [f"   {key:<34} {value}" for key, value in figures.items()]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# ------------------------------------------------------------------------------------------------- scenarios


def scenario_kill9(
    kafka: KafkaBroker,
    workdir: Path,
    kills: int,
    hooks: int = 10,
    conversations: int = 5,
    messages: int = 9,
    seed: int = 7,
) -> dict[str, Any]:
    """kill -9 the worker at random points while the workload flows; restart it each time."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    env = SyncEnv(kafka, workdir, partitions=4)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.01, "count": -1})
        work = Workload.build(hooks, conversations, messages)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        worker.start()
        # Publish for longer than the kills take (a restart costs about one session timeout, 6 s, plus start-up).
        publisher = publish_in_background(env, work.events, chunks=kills * 2, pause=4.5)
        points: list[float] = []
        started = time.monotonic()
        for _ in range(kills):
            seen = len(worker.outcomes())
            if not publisher.is_alive() and len(worker.outcomes()) == seen:
                break  # everything was published and synced: no more "while events flow" points to take
            # Kill only while events are being processed: wait for this incarnation's first outcome.
            wait_until(
                lambda seen=seen: len(worker.outcomes()) > seen or not publisher.is_alive(),
                120,
                interval=0.1,
                what="progress",
            )
            time.sleep(rng.uniform(0.0, 1.5))
            points.append(round(time.monotonic() - started, 2))
            worker.kill()
            worker.start()
        publisher.join()
        verdict = wait_complete(work, [emulator], 300)
        outcomes = worker.outcomes()
        return {
            "kill -9 points": len(points),
            "events published": len(work.events) + hooks,
            "hooks": hooks,
            "event outcomes logged (with replays)": len(outcomes),
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_glpi_faults(
    kafka: KafkaBroker, workdir: Path, hooks: int = 10, conversations: int = 3, messages: int = 6, seed: int = 11
) -> dict[str, Any]:
    """5xx bursts, hangs past the timeout, sessions expired mid-stream, 429s, replies lost after the write."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    env = SyncEnv(kafka, workdir, partitions=4)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        work = Workload.build(hooks, conversations, messages, first_hook=101)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        worker.env.update(GLPI_SYNC_GLPI_TIMEOUT="1.5", GLPI_SYNC_RETRY_BUDGET="30")
        worker.start()
        publisher = publish_in_background(env, work.events, chunks=10, pause=0.4)
        injected: dict[str, int] = {}
        paths = ["^User$", "^Ticket$", "^ITILFollowup$", "^search/", "^Ticket/\\d+$", "^User/\\d+/UserEmail$"]
        for _ in range(24):
            kind = rng.choice(["status", "timeout", "expire_session", "retry_after", "drop"])
            rule = {"path": rng.choice(paths), "kind": kind, "count": rng.randint(1, 3)}
            if kind == "status":
                rule["status"] = rng.choice([500, 502, 503, 504])
            elif kind == "timeout":
                rule["seconds"] = 3
            elif kind == "retry_after":
                rule["retry_after"] = 1
            emulator.faults(rule)
            injected[kind] = injected.get(kind, 0) + rule["count"]
            time.sleep(0.4)
        publisher.join()
        verdict = wait_complete(work, [emulator], 240)
        return {
            "faults injected": ", ".join(f"{k} ×{v}" for k, v in sorted(injected.items())),
            "events published": len(work.events) + hooks,
            "parked then resumed": sum(1 for o in worker.outcomes() if o["outcome"] == "parked"),
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_dead_hook(
    kafka: KafkaBroker, workdir: Path, outage: float, hooks: int = 10, rate: float = 20.0
) -> dict[str, Any]:
    """One hook's GLPI down for ``outage`` seconds; the others keep flowing; the dead hook catches up."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(kafka, workdir, partitions=2)
    healthy = EmulatorProcess(workdir)
    dead = EmulatorProcess(workdir)
    healthy.start()
    dead.start()
    try:
        dead_hook = 200 + hooks
        work = Workload.build(
            hooks, conversations=4, messages=int(rate * (outage + 10) / (hooks * 4)) + 1, first_hook=201
        )
        urls = {h: (dead.api_url if h == dead_hook else healthy.api_url) for h in work.logins}
        env.publish(work.hook_events(urls))
        worker = env.worker("w1")
        worker.env.update(GLPI_SYNC_RETRY_BUDGET="2", GLPI_SYNC_RESUME_INTERVAL="2")
        worker.start()
        dead.faults({"path": ".*", "kind": "status", "status": 503, "count": -1})
        outage_started = time.time()
        publisher = publish_in_background(env, work.events, chunks=int(outage + 10), pause=1.0)
        time.sleep(outage)
        dead.faults(clear=True)
        outage_ended = time.time()
        publisher.join()
        verdict = wait_complete(work, [healthy, dead], 300)
        lags = []
        for line in worker.outcomes():
            if (
                line["hook_id"] in (None, dead_hook)
                or line["outcome"] != "synced"
                or line["event"] == "hook_configured"
            ):
                continue
            done = datetime.fromisoformat(line["ts"]).timestamp()
            if outage_started <= done <= outage_ended:
                lags.append(line.get("lag_s"))
        lags = [lag for lag in lags if lag is not None]
        dead_done = [
            datetime.fromisoformat(o["ts"]).timestamp()
            for o in worker.outcomes()
            if o["hook_id"] == dead_hook and o["outcome"] == "synced" and o["event"] != "hook_configured"
        ]
        return {
            "outage of one hook's GLPI": f"{outage:.0f} s (hook {dead_hook}, 503 on every call)",
            "healthy hooks": hooks - 1,
            "healthy events synced during the outage": len(lags),
            "healthy sync lag p50 / p99 / max": (
                f"{statistics.median(lags):.2f} / {_p99(lags):.2f} / {max(lags):.2f} s" if lags else "n/a"
            ),
            "dead hook: events parked": sum(
                1 for o in worker.outcomes() if o["hook_id"] == dead_hook and o["outcome"] == "parked"
            ),
            "dead hook: caught up after recovery in": (
                f"{max(dead_done) - outage_ended:.1f} s" if dead_done else "n/a"
            ),
            **tally(work, verdict),
            "_healthy_synced_during_outage": len(lags),
        }
    finally:
        env.stop()
        healthy.stop()
        dead.stop()


def scenario_rebalance_and_broker_restart(kafka: KafkaBroker, workdir: Path, hooks: int = 10) -> dict[str, Any]:
    """A second worker joins and leaves mid-stream, then the broker restarts mid-stream."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(kafka, workdir, partitions=4)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.02, "count": -1})
        work = Workload.build(hooks, conversations=4, messages=6, first_hook=301)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        first = env.worker("w1")
        first.start()
        publisher = publish_in_background(env, work.events, chunks=30, pause=0.5)
        time.sleep(3)
        second = env.worker("w2")
        second.start()  # joins: rebalance
        time.sleep(5)
        second.stop()  # leaves gracefully: rebalance
        time.sleep(2)
        kafka.restart()  # the broker goes away and comes back mid-stream
        publisher.join()
        verdict = wait_complete(work, [emulator], 300)
        return {
            "workers": "w1 throughout; w2 joined at +3 s, left at +8 s; broker restarted at +10 s",
            "events published": len(work.events) + hooks,
            "w2 outcomes while it was in the group": len(second.outcomes()),
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


#: Broker faults beside a graceful restart: what each does to the broker (or the network), and for how long.
BROKER_FAULTS = {
    "kill9": "kill -9 of the broker, started again 5 s later",
    "freeze": "the broker stopped (SIGSTOP) for 10 s, longer than the consumers' 6 s session timeout",
    "cut": "every worker connection cut by a TCP proxy, new ones refused for 8 s, then restored",
}


def scenario_broker_fault(kafka: KafkaBroker, workdir: Path, *faults: str, hooks: int = 8) -> dict[str, Any]:
    """Two workers (reaching the broker through :class:`~tests.harness.TcpProxy`), a workload flowing, the faults
    one after the other (3 s apart).

    The log lines the workers wrote while the faults lasted are counted: an outage must not flood the log.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(kafka, workdir, partitions=4)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.02, "count": -1})
        work = Workload.build(hooks, conversations=3, messages=3 + 3 * len(faults), first_hook=500)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        workers = [env.worker("w1"), env.worker("w2")]
        for worker in workers:
            worker.env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.proxied_bootstrap
            worker.start()
        publisher = publish_in_background(env, work.events, chunks=10 * len(faults), pause=0.5)
        lines: list[int] = []
        for fault in faults:
            time.sleep(3)
            before = sum(len(w.log_path.read_text(errors="replace").splitlines()) for w in workers)
            if fault == "kill9":
                kafka.kill9()
                time.sleep(5)
                kafka.relaunch()
            elif fault == "freeze":
                kafka.freeze()
                time.sleep(10)
                kafka.thaw()
            else:
                kafka.proxy.cut()
                time.sleep(8)
                kafka.proxy.restore()
            lines.append(sum(len(w.log_path.read_text(errors="replace").splitlines()) for w in workers) - before)
        publisher.join()
        verdict = wait_complete(work, [emulator], 300)
        return {
            "faults": "; ".join(BROKER_FAULTS[fault] for fault in faults),
            "events published": len(work.events) + hooks,
            "worker log lines while each lasted": ", ".join(map(str, lines)),
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_late_commits(
    kafka: KafkaBroker, workdir: Path, hooks: int = 4, conversations: int = 3, messages: int = 4, seed: int = 17
) -> dict[str, Any]:
    """Creates GLPI commits after the client gave up, on a topic producers made with 3 partitions (defaults).

    Two shapes, on Users, Tickets and Followups: a proxy answers 504 at once while PHP commits 1-3 s later; a
    request waits 2-4 s (a busy php-fpm pool) past the worker's 1.5 s timeout, then commits.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    env = SyncEnv(kafka, workdir, partitions=3)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        work = Workload.build(hooks, conversations, messages, first_hook=401)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        worker.env.update(GLPI_SYNC_GLPI_TIMEOUT="1.5", GLPI_SYNC_LATE_COMMIT_WINDOW="6", GLPI_SYNC_RETRY_BUDGET="20")
        worker.start()
        publisher = publish_in_background(env, work.events, chunks=8, pause=0.5)
        injected = {"504 then commit": 0, "held past the timeout": 0}
        for _ in range(12):
            rule: dict[str, Any] = {
                "path": rng.choice(["^User$", "^Ticket$", "^ITILFollowup$"]),
                "method": "POST",
                "kind": "late_commit",
                "count": rng.randint(1, 2),
            }
            if rng.random() < 0.5:
                rule.update(answer="504", seconds=rng.uniform(1, 3))
                injected["504 then commit"] += rule["count"]
            else:
                rule.update(seconds=rng.uniform(2, 4))
                injected["held past the timeout"] += rule["count"]
            emulator.faults(rule)
            time.sleep(0.5)
        publisher.join()
        verdict = wait_complete(work, [emulator], 300)
        trashed = sum(1 for t in emulator.state()["Ticket"] if t.get("is_deleted"))
        return {
            "topic made by producers": "3 partitions; worker on default settings (GLPI_SYNC_PARTITIONS unset)",
            "late commits injected": ", ".join(f"{k} ×{v}" for k, v in injected.items()),
            "events published": len(work.events) + hooks,
            "late duplicates removed to the trash": trashed,
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_drain_kills(
    kafka: KafkaBroker, workdir: Path, kills: int = 3, hooks: int = 3, seed: int = 19
) -> dict[str, Any]:
    """Every hook paused, its events parked; resumed; the worker killed -9 at random points of the drain."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    env = SyncEnv(kafka, workdir, partitions=2)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.03, "count": -1})
        work = Workload.build(hooks, conversations=6, messages=6, first_hook=501)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        worker.env.update(GLPI_SYNC_RESUME_INTERVAL="1")
        worker.start()
        # Commands travel on the control topic, configurations on the input topic: no order between the two.
        wait_until(lambda: _outcome_count(worker, "hook_configured") >= hooks, 60, what="configurations")
        for hook in work.logins:
            env.command("hook_pause", hook, reason="chaos")
        wait_until(lambda: _outcome_count(worker, "hook_pause", "synced") >= hooks, 60, what="pauses")
        env.publish(work.events)
        wait_until(
            lambda: sum(o["outcome"] == "parked" for o in worker.outcomes()) >= len(work.events), 120, what="parked"
        )
        for hook in work.logins:
            env.command("hook_resume", hook)
        points = 0
        followups = expected_counts(work)[2]

        def synced() -> int:
            return len(emulator.state()["ITILFollowup"])

        for _ in range(kills):
            before = synced()
            try:
                wait_until(lambda b=before: synced() > b + 3 or synced() >= followups, 60, interval=0.1)
            except AssertionError:
                break  # the drain stalled: wait_complete reports what is missing
            if synced() >= followups:
                break  # drained already: no point of this drain is left to kill
            time.sleep(rng.uniform(0, 0.8))
            worker.kill()
            points += 1
            worker.start()
        verdict = wait_complete(work, [emulator], 240)
        return {
            "events parked, then drained": len(work.events),
            "kill -9 during the drain": points,
            **tally(work, verdict),
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_closed_tickets_and_big_messages(kafka: KafkaBroker, workdir: Path, hooks: int = 3) -> dict[str, Any]:
    """A Technician-like profile; tickets closed by technicians mid-conversation; 950 kB messages; a paused hook.

    Conversations whose ticket was closed go on in a new ticket linked to it; the big messages are synced (and
    parked in pieces on the paused hook); nothing is paused for one ticket's problem.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(kafka, workdir, partitions=2)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.config(profile="restricted")
        work = Workload.build(hooks, conversations=4, messages=4, first_hook=601)
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        worker.start()
        # Phase 1: each conversation opens, with its first message.
        first = [e for e in work.events if e["event"] == "conversation_created" or _message_number(e) == 1]
        rest = [e for e in work.events if e not in first]
        env.publish(first)
        wait_until(lambda: len(_live_tickets(emulator.state())) == hooks * 4, 120, what="phase 1 tickets")
        # Technicians close half of the tickets; an operator pauses one hook.
        closed = 0
        for ticket in _live_tickets(emulator.state()):
            conversation = int(html.unescape(ticket["content"]).split("[cw:")[1].split("/")[1].split("]")[0])
            if conversation % 2 == 1:
                emulator.set_status(ticket["id"], 6)
                closed += 1
        paused_hook = min(work.logins)
        env.command("hook_pause", paused_hook, reason="chaos")
        # Phase 2: the rest, with a 950 kB message in two conversations of every hook.
        big = 0
        for event in rest:
            if _message_number(event) == 2 and event["payload"]["conversation"]["id"] in (1, 2):
                event["payload"]["content"] = "<>" * 475_000
                big += 1
        env.publish(rest)
        time.sleep(3)
        env.command("hook_resume", paused_hook)
        verdict = wait_complete(work, [emulator], 300)
        links = len(emulator.state()["Ticket_Ticket"])
        return {
            "profile": "Technician-like: refuses followups on Closed tickets",
            "tickets closed mid-conversation": closed,
            "linked tickets that continued them": links,
            "950 kB messages": big,
            "hook paused during phase 2": paused_hook,
            "events parked on the paused hook": sum(1 for o in worker.outcomes() if o["outcome"] == "parked"),
            **tally(work, verdict),
            "_links": links,
            "_closed": closed,
        }
    finally:
        env.stop()
        emulator.stop()


def scenario_shared_contacts(
    kafka: KafkaBroker, workdir: Path, hooks: int = 2, contacts: int = 2, conversations: int = 16, kills: int = 2
) -> dict[str, Any]:
    """Many conversations of one contact at once: they sync side by side (lanes per conversation), yet each contact
    gets one GLPI user; an outage of GLPI parks them all, the drain runs them side by side again; kill -9 midway."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(kafka, workdir, partitions=2)
    emulator = EmulatorProcess(workdir)
    emulator.start()
    try:
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.05, "count": -1})
        work = Workload.build(
            hooks, conversations, messages=3, first_hook=701, contacts=contacts, shuffle=random.Random(5)
        )
        env.publish(work.hook_events(dict.fromkeys(work.logins, emulator.api_url)))
        worker = env.worker("w1")
        # A small window: fetching pauses and resumes often, through faust's real consumer.
        worker.env["GLPI_SYNC_MAX_INFLIGHT_PER_PARTITION"] = "8"
        worker.start()
        half = len(work.events) // 2
        env.publish(work.events[:half])  # every conversation of the first half at once
        wait_until(lambda: _outcome_count(worker, "conversation_created") >= 2, 120, what="first conversations")
        worker.kill()
        worker.start()
        # GLPI goes down while the second half arrives: everything parks, then drains side by side.
        emulator.faults({"path": ".*", "kind": "status", "status": 503, "count": -1})
        env.publish(work.events[half:])
        wait_until(lambda: _outcome_count(worker, "message_created", "parked") >= 5, 120, what="events parked")
        emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.05, "count": -1}, clear=True)
        for _ in range(kills - 1):
            time.sleep(1.0)
            worker.kill()
            worker.start()
        verdict = wait_complete(work, [emulator], 300)
        return {
            "contacts / conversations per hook": f"{contacts} / {conversations}",
            "kill -9": kills,
            "parked during the outage": _outcome_count(worker, "message_created", "parked"),
            **tally(work, verdict),
            "_fetcher_missing": sum(FETCHER_MISSING in str(line.get("msg")) for line in worker.log_lines()),
        }
    finally:
        env.stop()
        emulator.stop()


def _outcome_count(worker: Any, event: str, outcome: str | None = None) -> int:
    return sum(1 for o in worker.outcomes() if o["event"] == event and (outcome is None or o["outcome"] == outcome))


def _message_number(event: dict[str, Any]) -> int:
    """The n of a workload message (its id ends in n); 0 for other events."""
    return int(event["payload"]["id"]) % 1000 if event["event"] == "message_created" else 0


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def printable(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


@contextlib.contextmanager
def starved(busy: int) -> Iterator[None]:
    """``busy`` processes spinning beside the scenario: the workers, the broker and GLPI get what CPU is left.

    Production nodes are shared: a worker short of CPU answers heartbeats late, rebalances mid-work and sees its
    timers fire late. Each loop runs at the workers' priority.
    """
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description="Fault-injection suite (long form of tests/e2e/test_chaos.py)")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--messages", type=int, default=9)
    parser.add_argument("--starve", type=int, default=0, help="busy loops beside every scenario (CPU starvation)")
    parser.add_argument("--runs", type=int, default=1, help="run each chosen scenario this many times")
    parser.add_argument("--only", nargs="*", default=[], help="scenario names (see the list below)")
    args = parser.parse_args()
    # The scenarios' own producers see every broker fault too; the report is about the workers (their logs).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="glpi-sync-chaos-"))
    kafka = KafkaBroker(workdir / "kafka")
    (workdir / "kafka").mkdir()
    kafka.start()
    runs: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
        "kill9": (
            "kill -9 at random points",
            lambda wd: scenario_kill9(kafka, wd, args.kills, conversations=args.conversations, messages=args.messages),
        ),
        "glpi": (
            "GLPI faults: 5xx, hangs, expired sessions, 429, lost replies",
            lambda wd: scenario_glpi_faults(kafka, wd),
        ),
        "dead": ("one hook's GLPI down", lambda wd: scenario_dead_hook(kafka, wd, args.outage)),
        "rebalance": ("rebalance and broker restart", lambda wd: scenario_rebalance_and_broker_restart(kafka, wd)),
        **{
            f"broker-{fault}": (
                f"broker fault: {text}",
                lambda wd, fault=fault: scenario_broker_fault(kafka, wd, fault),
            )
            for fault, text in BROKER_FAULTS.items()
        },
        "late": (
            "creates GLPI commits after the client gave up (pre-existing 3-partition topic)",
            lambda wd: scenario_late_commits(kafka, wd, hooks=8, conversations=4, messages=6),
        ),
        "drain": ("kill -9 during drains", lambda wd: scenario_drain_kills(kafka, wd, kills=8)),
        "closed": (
            "closed tickets, a restricted profile, 950 kB messages",
            lambda wd: scenario_closed_tickets_and_big_messages(kafka, wd),
        ),
        "shared": (
            "many conversations of one contact at once, an outage, kill -9",
            lambda wd: scenario_shared_contacts(kafka, wd, conversations=30, kills=4),
        ),
    }
    chosen = args.only or list(runs)
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(runs)}")
    failures = total = 0
    try:
        with starved(args.starve):
            for name in chosen:
                title, run = runs[name]
                for attempt in range(1, args.runs + 1):
                    total += 1
                    figures = run(workdir / f"{name}-{attempt}")
                    suffix = f" (run {attempt} of {args.runs}{f', {args.starve} busy loops' if args.starve else ''})"
                    report(title + suffix, printable(figures))
                    if not figures["_verdict"].ok:
                        failures += 1
                        print(
                            "   details:",
                            figures["_verdict"].details[:20],
                            f"(logs in {workdir / f'{name}-{attempt}'})",
                        )
    finally:
        kafka.stop()
    print(f"chaos: {total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
