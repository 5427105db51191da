"""Pure translations: names, logins, phones, text length and HTML, dates."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from app.sync import mapping


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Marta Silva", ("Marta", "Silva")),
        ("Cher", ("", "Cher")),
        ("  Ana   Maria  Souza ", ("Ana", "Maria Souza")),
        ("quiet-river-512", ("", "")),
        (None, ("", "")),
    ],
)
def test_split_name(name: str | None, expected: tuple[str, str]) -> None:
    assert mapping.split_name(name) == expected


@pytest.mark.parametrize(
    ("email", "phone", "login"),
    [
        ("a@b.example", "+351 912", "a@b.example"),
        (None, "+351 912-000", "351912000"),
        (None, None, "chatwoot-7-9"),
    ],
)
def test_user_login(email: str | None, phone: str | None, login: str) -> None:
    assert mapping.user_login(7, 9, email, phone) == login


def test_phone_and_email_normalisation() -> None:
    assert mapping.normalise_phone("+351 912-000-111") == "+351912000111"
    assert mapping.normalise_phone("abc") is None
    assert mapping.normalise_email("  Marta@Example.ORG ") == "marta@example.org"


def test_fit_varchar_counts_glpi_encoding_and_never_cuts_an_entity() -> None:
    text = "A&B " * 100
    fitted = mapping.fit_varchar(text)
    assert mapping.encoded_length(fitted) <= 255
    assert fitted.endswith("…")
    assert mapping.fit_varchar("short & sweet") == "short & sweet"


def test_html_paragraphs_escape_and_keep_lines() -> None:
    assert mapping.html_paragraphs("a < b\nc & d\n\nnext") == "<p>a &lt; b<br>c &amp; d</p><p>next</p>"
    assert mapping.html_paragraphs("   ") == ""


def test_glpi_datetime_in_server_zone() -> None:
    moment = datetime(2025, 11, 3, 14, 3, 12, 481000, tzinfo=UTC)
    assert mapping.glpi_datetime(moment) == "2025-11-03 14:03:12"
    assert mapping.glpi_datetime(moment, "Europe/Lisbon") == "2025-11-03 14:03:12"
    assert mapping.glpi_datetime(moment, "Europe/Paris") == "2025-11-03 15:03:12"


def test_markers_have_no_characters_glpi_encodes() -> None:
    for marker in (
        mapping.ticket_marker(7, 57),
        mapping.followup_marker(4412),
        mapping.followup_marker(1, "deletion"),
    ):
        assert not set(marker) & set("&<>")


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+351 912 345 678", None, "+351912345678"),
        ("00351912345678", None, "+351912345678"),
        ("912 345 678", "PT", "+351912345678"),
        ("(0)20 7946 0958", "gb", "+442079460958"),
        ("912 345 678", None, "912345678"),  # national, no region: the digits, unchanged
        ("+1-not-a-phone", None, "+1"),
        ("n/a", None, None),
    ],
)
def test_phones_become_one_e164_number(raw: str, region: str | None, e164: str | None) -> None:
    assert mapping.normalise_phone(raw, region) == e164


def test_phone_matching_can_be_turned_off_per_hook() -> None:
    from app.events import HookSettings, parse_envelope
    from app.sync.commands import EnsureUser
    from app.sync.decide import decide
    from app.sync.state import HookRecord, SyncContext, SyncView
    from tests.conftest import envelope, load_example

    def lookups(**settings: object) -> list[str]:
        hook = HookRecord(
            hook_id=7,
            account_id=7,
            account_features=("crm_integration",),
            settings=HookSettings(api_url="https://g/apirest.php", user_token="u", **settings),  # type: ignore[arg-type]
        )
        ev = parse_envelope(orjson.dumps(envelope("contact_updated", load_example("contact_updated"))))
        step = decide(SyncView(hook=hook), ev, SyncContext())
        assert isinstance(step, EnsureUser)
        return [lookup.describe for lookup in step.lookups]

    assert lookups() == ["email", "phone"]
    assert lookups(match_by_phone="false") == ["email"]  # a family phone must not merge two people
