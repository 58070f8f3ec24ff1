"""`openbess run` with interfaces enabled from the command line, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .mosquitto import free_port


def wait_http(url: str, timeout_s: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout_s} s")
        time.sleep(0.2)


def test_run_serves_the_rest_api_and_stops_cleanly(tmp_path: Path):
    port = free_port()
    db = tmp_path / "run.sqlite"
    env = {**os.environ, "OPENBESS_TOKEN": "secret"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openbess.cli",
            "run",
            "--site",
            "home",
            "--speed",
            "600",
            "--strategy",
            "mpc",
            "--db",
            str(db),
            "--http",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/v1/health")
        deadline = time.monotonic() + 60
        while True:
            tel = httpx.get(f"{base}/api/v1/telemetry", timeout=5).json()
            if tel.get("contactor") == "closed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for key in (
            "soc",
            "soh",
            "cell_voltage_min_v",
            "cell_voltage_max_v",
            "temperature_max_degc",
            "charge_power_limit_w",
            "discharge_power_limit_w",
            "contactor",
            "alarms",
        ):
            assert key in tel, key
        assert 0.0 <= tel["soc"] <= 1.0
        assert tel["contactor"] == "closed"
        # writes need the token
        body = {"mode": "charge", "power_w": 2000.0, "duration_s": 600.0}
        assert httpx.post(f"{base}/api/v1/command", json=body, timeout=10).status_code == 401
        r = httpx.post(
            f"{base}/api/v1/command",
            json=body,
            headers={"Authorization": "Bearer secret"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "http"
        assert httpx.get(f"{base}/", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"http interface started: http://127.0.0.1:{port}" in err
    assert "stopped:" in err
    assert db.exists()
