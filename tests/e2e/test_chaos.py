"""The short fault-injection suite (the long one is `make chaos`): 0 duplicates and 0 missing, figures printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import (
    printable,
    report,
    scenario_broker_fault,
    scenario_closed_tickets_and_big_messages,
    scenario_dead_hook,
    scenario_drain_kills,
    scenario_glpi_faults,
    scenario_kill9,
    scenario_late_commits,
    scenario_rebalance_and_broker_restart,
    scenario_shared_contacts,
)
from tests.harness import KafkaBroker

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(900)]


def _check(title: str, figures: dict, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print()
        report(title, printable(figures))
    verdict = figures["_verdict"]
    assert verdict.duplicates == 0, verdict.details
    assert verdict.missing == 0, verdict.details
    assert verdict.wrong_status == 0, verdict.details
    assert not verdict.timed_out, verdict.details


def test_kill9_at_three_random_points(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Three in the suite (make chaos runs fifty): each restart costs a worker start, a session timeout and a table
    # recovery; the other cases of this file kill -9 during drains, outages and shared-contact bursts.
    figures = scenario_kill9(kafka, tmp_path / "kill9", kills=3)
    assert figures["kill -9 points"] == 3
    assert figures["events published"] >= 500
    _check("kill -9 at random points (short)", figures, capsys)


def test_glpi_faults(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check("GLPI faults (short)", scenario_glpi_faults(kafka, tmp_path / "faults"), capsys)


def test_one_dead_hook(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = scenario_dead_hook(kafka, tmp_path / "dead", outage=10)
    assert figures["_healthy_synced_during_outage"] > 0  # the other hooks kept flowing
    _check("one hook's GLPI down (short)", figures, capsys)


def test_rebalance_and_broker_restart(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check("rebalance and broker restart", scenario_rebalance_and_broker_restart(kafka, tmp_path / "rebal"), capsys)


def test_creates_glpi_commits_after_the_client_gave_up(
    kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _check("late commits on a pre-existing 3-partition topic (short)", scenario_late_commits(kafka, tmp_path), capsys)


def test_kill9_during_drains(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = scenario_drain_kills(kafka, tmp_path)
    assert figures["kill -9 during the drain"] >= 1
    _check("kill -9 during drains (short)", figures, capsys)


def test_closed_tickets_restricted_profile_and_big_messages(
    kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = scenario_closed_tickets_and_big_messages(kafka, tmp_path)
    assert figures["_closed"] > 0 and figures["_links"] == figures["_closed"]
    _check("closed tickets, restricted profile, 950 kB messages (short)", figures, capsys)


def test_many_conversations_of_one_contact_at_once(
    kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = scenario_shared_contacts(kafka, tmp_path)
    assert figures["parked during the outage"] >= 5
    assert figures["_fetcher_missing"] == 0  # windows refill at once after a pause (app/lanes.py)
    _check("many conversations of one contact at once (short)", figures, capsys)


def test_broker_killed_frozen_and_cut_off(
    kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of the broker, then SIGSTOP past the session timeout, then the network cut: nothing lost or doubled,
    and the workers' log stays short while each lasts (aiokafka's errors are damped)."""
    figures = scenario_broker_fault(kafka, tmp_path / "broker", "kill9", "freeze", "cut")
    assert all(int(n) < 400 for n in figures["worker log lines while each lasted"].split(", ")), figures
    _check("broker killed, frozen and cut off", figures, capsys)
