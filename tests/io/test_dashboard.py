"""The live dashboard in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from openbess.config import HttpConfig
from openbess.io.http import HttpServer

from .conftest import Running, start_site

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "drill-token"
WAIT_MS = 20_000


@dataclass
class Watched:
    """A page with its console errors and the requests it made."""

    page: Page
    base: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.base, "data:"))]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _serve(tmp: Path, site: str) -> tuple[Running, HttpServer]:
    server = HttpServer(HttpConfig(token=TOKEN).model_copy(update={"port": 0}))
    return start_site(tmp, site, speed=120.0, interfaces=(server,)), server


def _open(browser: Browser, url: str) -> Watched:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    w = Watched(page, url)

    def on_console(m: ConsoleMessage) -> None:
        if m.type == "error":
            w.errors.append(m.text)

    def on_request(r: Request) -> None:
        w.requests.append(r.url)

    page.on("console", on_console)
    page.on("pageerror", lambda e: w.errors.append(f"page error: {e}"))
    page.on("request", on_request)
    page.goto(url + "/")
    return w


@pytest.fixture(scope="module")
def home(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    """The ``home`` site with the optimiser (it plans) and the dashboard open."""
    tmp = tmp_path_factory.mktemp("dash")
    text = resources.files("openbess.sites").joinpath("home.toml").read_text()
    site_file = tmp / "home_mpc.toml"
    site_file.write_text(text.replace('strategy = "self_consumption"', 'strategy = "mpc"'))
    run, server = _serve(tmp, str(site_file))
    try:
        w = _open(browser, server.url)
        yield w
        w.page.close()
    finally:
        run.stop()


def _text(page: Page, sel: str) -> str:
    return page.inner_text(sel)


def test_pages_load_offline_and_live_values_move(home: Watched):
    page = home.page
    page.wait_for_function("document.getElementById('soc-value').textContent.includes('%')")
    t0 = _text(page, "#site-time")
    # live: the site time shown moves without a reload
    page.wait_for_function(
        f"document.getElementById('site-time').textContent !== {t0!r}", timeout=WAIT_MS
    )
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert _text(page, "#contactor-state") == "closed"
    assert _text(page, "#gate-outcome") in {"accepted", "clamped"}
    assert "ems" in _text(page, "#command-value")
    assert "16 cells" in _text(page, "#cells-count")
    # plan vs actual and history are drawn (paths with points)
    page.wait_for_function(
        "document.querySelectorAll('#plan-power path').length >= 3", timeout=WAIT_MS
    )
    assert page.is_hidden("#plan-missing")
    # the controller's own report on its forecasts (model forecasts, scored on history)
    page.wait_for_function(
        "document.getElementById('forecast-skill').textContent.includes('skill')",
        timeout=WAIT_MS,
    )
    page.wait_for_function(
        "[...document.querySelectorAll('#hist-soc path')]"
        ".some(p => p.getAttribute('d').length > 20)",
        timeout=WAIT_MS,
    )
    assert page.locator("#events-body tr").count() >= 1
    flow = page.text_content("#flow") or ""
    for kw in ("Grid", "PV", "Load", "Battery"):
        assert kw in flow
    assert home.errors == []
    assert home.external() == []
    assert f"{home.base}/api/v1/stream" in home.requests


def test_a_fault_drill_shows_the_alarm_and_clears(home: Watched):
    page = home.page
    page.wait_for_function("document.getElementById('soc-value').textContent.includes('%')")
    # writes need the token
    page.fill("#token-input", "")
    page.click("#drill-inject")
    page.wait_for_function("document.getElementById('drill-result').textContent.includes('token')")
    page.fill("#token-input", TOKEN)
    page.select_option("#drill-kind", "temperature_sensor_lost")
    page.click("#drill-inject")
    page.wait_for_function(
        "document.getElementById('drill-result').textContent.includes('injected')",
        timeout=WAIT_MS,
    )
    page.wait_for_function(
        "document.getElementById('alarm-banner').textContent.includes('temperature_invalid')",
        timeout=WAIT_MS,
    )
    assert "warn" in (page.get_attribute("#alarm-banner", "class") or "")
    assert "temperature_invalid" in _text(page, "#alarm-list")
    assert "temperature_invalid" in _text(page, "#watch-alarms")
    page.wait_for_function(
        "document.getElementById('events-body').textContent.includes('temperature_invalid')",
        timeout=WAIT_MS,
    )
    page.click("#ack-all")
    page.wait_for_function(
        "document.getElementById('alarm-list').textContent.includes('acknowledged')",
        timeout=WAIT_MS,
    )
    page.click("#drill-clear")
    page.wait_for_function(
        "document.getElementById('drill-result').textContent.includes('cleared')",
        timeout=WAIT_MS,
    )
    page.wait_for_function(
        "document.getElementById('alarm-banner').textContent === 'no alarm'", timeout=WAIT_MS
    )
    assert home.errors == []
    assert home.external() == []


def test_commercial_cells_update_fast_enough(
    browser: Browser, tmp_path: Path, record_property: Any
):
    run, server = _serve(tmp_path, "commercial")
    try:
        w = _open(browser, server.url)
        page = w.page
        page.wait_for_function("window.obStats && window.obStats.cells_n >= 6", timeout=WAIT_MS)
        stats = page.evaluate("window.obStats")
        assert "1152 cells" in _text(page, "#cells-count")
        height = page.evaluate("document.getElementById('cells-canvas').height")
        assert height > 100  # 4 strings x 8 modules of 36 cells drawn
        # the heat map's hover names a cell
        page.hover("#cells-canvas", position={"x": 60, "y": 20})
        assert "cell " in _text(page, "#cells-tip")
        mean = stats["total_ms"] / stats["n"]
        cells_mean = stats["cells_total_ms"] / stats["cells_n"]
        record_property("update_mean_ms", mean)
        record_property("cells_update_mean_ms", cells_mean)
        record_property("cells_update_max_ms", stats["cells_max_ms"])
        log.warning(
            "commercial dashboard (1152 cells): %d updates handled in %.2f ms mean, %.2f ms "
            "max; %d heat-map updates (parse + redraw) %.2f ms mean, %.2f ms max, arrival to "
            "redrawn %.2f ms max",
            stats["n"],
            mean,
            stats["max_ms"],
            stats["cells_n"],
            cells_mean,
            stats["cells_max_ms"],
            stats["cells_latency_max_ms"],
        )
        assert w.errors == []
        assert w.external() == []
        page.close()
    finally:
        run.stop()
