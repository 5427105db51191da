"""The dashboard app in a real browser (Debian's Chromium through Selenium): Chatwoot's conversation screen (the
emulator's page, which frames the app and posts the context as Chatwoot's ``Frame.vue`` does) shows the GLPI
ticket, its technician, the public followups both ways and the sync's state; never a private followup; a wrong
key, another account's conversation and a forged context get nothing. A screenshot is kept in build/artifacts/.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ADMIN_TOKEN, SyncEnv, hook_envelope
from tests.e2e.test_stock_chatwoot import chatwoot_sends_to, ingress_for
from tests.e2e.test_two_way import Technician
from tests.harness import ChatwootEmulatorProcess, EmulatorProcess, wait_until

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]
KEY = "dashboard-key-for-hook-7-0123456789abcdef"
#: What the ingress reads the workers' conversation views with (it opens nothing else there).
DASHBOARD_TOKEN = "dashboard-token-5c1d9e"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=520,760")
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=options)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    return asyncio.run(go())


def _frame_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.switch_to.frame(driver.find_element(By.ID, "dashboard-app--frame-0-0"))
    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except Exception:  # a page the browser refused to frame has no body to read
        return ""
    finally:
        driver.switch_to.default_content()


def test_agents_see_the_ticket_in_chatwoot_and_strangers_see_nothing(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker = sync_env.worker()
    worker.env.update(GLPI_SYNC_HOOK_SECRET_CHATWOOT_7=chatwoot.token, GLPI_SYNC_DASHBOARD_TOKEN=DASHBOARD_TOKEN)
    worker.start()
    connection = {"chatwoot_url": chatwoot.base, "chatwoot_token": {"env": "GLPI_SYNC_HOOK_SECRET_CHATWOOT_7"}}
    sync_env.publish(
        [hook_envelope(emulator.api_url, **connection), hook_envelope(emulator.api_url, hook_id=8, account_id=8)]
    )
    ingress = ingress_for(
        sync_env,
        tmp_path,
        GLPI_SYNC_DASHBOARD_KEY_7=KEY,
        GLPI_SYNC_WORKER_URL=f"http://127.0.0.1:{worker.http_port}",
        GLPI_SYNC_DASHBOARD_TOKEN=DASHBOARD_TOKEN,
        GLPI_SYNC_ADMIN_TOKEN="",  # the ingress never holds the admin token
    )
    ingress.start()
    driver = None
    try:
        chatwoot_sends_to(chatwoot, ingress)
        opened = chatwoot.call(
            "POST",
            "conversation",
            {"contact": {"name": "Marta Keller", "email": "marta@example.org"}, "content": "My VPN drops every hour"},
        )
        conversation = opened["conversation_id"]
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) >= 1, 60, what="the ticket and first followup")
        ticket = emulator.state()["Ticket"][0]["id"]
        technician = Technician(emulator)
        technician.assign(ticket)
        technician.followup(ticket, "Please update the VPN client to 5.2")
        technician.followup(ticket, "internal: the gateway certificate expires Friday", private=True)

        # Chatwoot's conversation screen with the app in its tab.
        app_url = f"{ingress.base}/dashboard/7?key={KEY}"
        driver = _browser()
        driver.get(f"{chatwoot.base}/_emulator/dashboard_app?conversation={conversation}&url={_q(app_url)}")
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and "Please update the VPN client" not in text:
            time.sleep(0.5)
            text = _frame_text(driver)
        assert f"Ticket #{ticket}: Chat #{conversation}" in text, text
        assert "Processing (assigned)" in text and "Ana Tech & Co" in text  # status, technician
        assert "Marta Keller" in text  # the requester
        assert "My VPN drops every hour" in text and "Please update the VPN client to 5.2" in text  # both ways
        assert "gateway certificate" not in text  # a private followup is a technicians' note
        assert "Last message synced" in text and "running" in text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-app.png"))

        # A wrong key: the frame shows nothing of the ticket; the page is never framed by anyone but Chatwoot.
        wrong = f"{ingress.base}/dashboard/7?key={KEY[:-1]}x"
        driver.get(f"{chatwoot.base}/_emulator/dashboard_app?conversation={conversation}&url={_q(wrong)}")
        time.sleep(2)
        assert "Ticket" not in _frame_text(driver)
        status, headers, _ = _get(app_url)
        assert status == 200
        assert f"frame-ancestors {chatwoot.base}" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"

        # The view answers only with the hook's key, only about the hook's account, and shows no internals.
        view_url = f"{ingress.base}/dashboard/7/conversation/{conversation}"
        assert _get(view_url)[0] == 404
        assert _get(view_url, {"X-Dashboard-Key": KEY + "x"})[0] == 404
        assert _get(f"{ingress.base}/dashboard/8/conversation/{conversation}", {"X-Dashboard-Key": KEY})[0] == 404
        status, _, body = _get(view_url, {"X-Dashboard-Key": KEY})
        assert status == 200
        view = orjson.loads(body)
        assert view["ticket"]["id"] == ticket
        for secret in (ADMIN_TOKEN, chatwoot.token, "emulator-user-token", f"127.0.0.1:{worker.http_port}"):
            assert secret not in body.decode()
        # The dashboard token opens the conversation views on the workers, nothing else.
        assert worker.http_get("/state/hooks", token=DASHBOARD_TOKEN)[0] == 401
        assert worker.http_get(f"/state/hook/7/conversation/{conversation}", token=DASHBOARD_TOKEN)[0] == 401
        assert worker.http_get(f"/state/hook/7/conversation/{conversation}/agent", token=DASHBOARD_TOKEN)[0] == 200
        # A conversation this hook's account never had: nothing about anyone else's.
        status, _, body = _get(f"{ingress.base}/dashboard/7/conversation/999", {"X-Dashboard-Key": KEY})
        assert status == 200 and orjson.loads(body)["ticket"] is None

        # A forged context (from anything but the parent Chatwoot frame) is ignored.
        driver.get(app_url)
        forged = {"event": "appContext", "data": {"conversation": {"id": conversation}}}
        driver.execute_script(f"window.postMessage({orjson.dumps(orjson.dumps(forged).decode()).decode()}, '*');")
        time.sleep(2)
        from selenium.webdriver.common.by import By

        assert "Ticket" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        if driver is not None:
            driver.quit()
        ingress.stop()


def _q(url: str) -> str:
    from urllib.parse import quote

    return quote(url, safe="")
