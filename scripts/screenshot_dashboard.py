"""Take the README screenshot of the dashboard: the demo site as `make run` starts it.

Runs the ``home`` site (optimiser as EMS) at 1440x with the HTTP interface on a free port,
lets it run ``--wait`` wall seconds, and captures the top of the page with headless Chromium
(Playwright driving Debian's /usr/bin/chromium).

Usage: ``python scripts/screenshot_dashboard.py [-o docs/img/dashboard.png] [--wait 20]``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from openbess.config import HttpConfig, load_site
from openbess.io.http import HttpServer
from openbess.io.hub import Hub
from openbess.simulate import run_realtime

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--out", default="docs/img/dashboard.png")
    parser.add_argument("--wait", type=float, default=20.0, help="wall seconds of running first")
    parser.add_argument("--site", default="home")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_site(args.site)
    config = config.model_copy(update={"ems": config.ems.model_copy(update={"strategy": "mpc"})})
    hub = Hub(config.name)
    server = HttpServer(HttpConfig(enabled=True, port=0))
    with tempfile.TemporaryDirectory() as tmp:
        thread = threading.Thread(
            target=run_realtime,
            kwargs={
                "config": config,
                "speed": 1440.0,
                "db_path": Path(tmp) / "run.sqlite",
                "hub": hub,
                "interfaces": (server,),
                "status": lambda _: None,
            },
            daemon=True,
        )
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while hub.latest() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(args.wait)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(server.url)
                time.sleep(4.0)  # a few live updates
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out)
                browser.close()
        finally:
            hub.stopped.set()
            thread.join(60)
    logging.getLogger(__name__).warning("wrote %s", args.out)


if __name__ == "__main__":
    main()
