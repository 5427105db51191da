"""Fault-injection scenarios on real Kafka, real worker processes and GLPI emulators; each prints its figures.

``make chaos`` runs the long form (``python -m tests.chaos``); ``tests/e2e/test_chaos.py`` runs a short form
inside ``make test``. Every scenario ends by counting, in GLPI, users per contact, tickets per conversation and
followups per message (by their markers) and the final ticket statuses: duplicates and missing must both be 0.
"""

from __future__ import annotations

import argparse
import html
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import SyncEnv, envelope, hook_envelope, load_example
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
    def build(cls, hooks: int, conversations: int, messages: int, first_hook: int = 1) -> Workload:
        work = cls(hooks, conversations, messages)
        per_hook: list[list[dict[str, Any]]] = []
        for hook in range(first_hook, first_hook + hooks):
            sequence: list[dict[str, Any]] = []
            work.logins[hook] = set()
            for conv in range(1, conversations + 1):
                contact_id = hook * 1000 + conv
                email = f"c{hook}-{conv}@chaos.example"
                work.logins[hook].add(email)
                body = load_example("conversation_created", id=conv)
                sender = body["meta"]["sender"]
                sender.update(id=contact_id, email=email, name=f"Chaos {hook} {conv}", phone_number=None)
                body["messages"][0].update(id=hook * 1_000_000 + conv * 1000, sender=dict(sender))
                sequence.append(envelope("conversation_created", body, hook, hook))
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
            per_hook.append(sequence)
        # Interleave the hooks round-robin; each hook keeps its own order.
        while any(per_hook):
            for sequence in per_hook:
                if sequence:
                    work.events.append(sequence.pop(0))
        return work

    def hook_events(self, api_urls: dict[int, str]) -> list[dict[str, Any]]:
        return [hook_envelope(url, hook_id=hook, account_id=hook) for hook, url in api_urls.items()]


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
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.wrong_status == 0


def verify(work: Workload, states: list[dict[str, Any]], hooks: set[int] | None = None) -> Verdict:
    """Count what GLPI holds against what the workload must produce."""
    verdict = Verdict()
    wanted_hooks = hooks if hooks is not None else set(work.logins)
    logins = [u["name"] for state in states for u in state["User"] if u["id"] != 2]
    tickets = [t for state in states for t in state["Ticket"]]
    contents = [html.unescape(t["content"]) for t in tickets]
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
        verdict.tickets += min(len(found), 1)
        verdict.duplicates += max(0, len(found) - 1)
        if not found:
            verdict.missing += 1
            verdict.details.append(f"missing ticket {marker}")
        elif found[0]["status"] != status:
            verdict.wrong_status += 1
            verdict.details.append(f"ticket {marker} status {found[0]['status']} != {status}")
    for marker in work.followups:
        if int(marker) // 1_000_000 not in wanted_hooks:
            continue
        count = markers.count(marker)
        verdict.followups += min(count, 1)
        verdict.duplicates += max(0, count - 1)
        if count == 0:
            verdict.missing += 1
            verdict.details.append(f"missing followup {marker}")
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
    finally:
        verdict = verify(work, [e.state() for e in emulators], hooks)
    return verdict


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


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def printable(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


def main() -> int:
    parser = argparse.ArgumentParser(description="Fault-injection suite (long form of tests/e2e/test_chaos.py)")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--messages", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="glpi-sync-chaos-"))
    kafka = KafkaBroker(workdir / "kafka")
    (workdir / "kafka").mkdir()
    kafka.start()
    failures = 0
    try:
        runs = [
            (
                "kill -9 at random points",
                lambda: scenario_kill9(
                    kafka, workdir / "kill9", args.kills, conversations=args.conversations, messages=args.messages
                ),
            ),
            (
                "GLPI faults: 5xx, hangs, expired sessions, 429, lost replies",
                lambda: scenario_glpi_faults(kafka, workdir / "faults"),
            ),
            ("one hook's GLPI down", lambda: scenario_dead_hook(kafka, workdir / "dead", args.outage)),
            ("rebalance and broker restart", lambda: scenario_rebalance_and_broker_restart(kafka, workdir / "rebal")),
        ]
        for title, run in runs:
            figures = run()
            report(title, printable(figures))
            failures += 0 if figures["_verdict"].ok else 1
            if not figures["_verdict"].ok:
                print("   details:", figures["_verdict"].details[:20])
    finally:
        kafka.stop()
    print(f"chaos: {len(runs) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
