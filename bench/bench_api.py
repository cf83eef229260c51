"""`sharedroot serve` on a site of 1000 read-only clones: API latency and event delivery.

- GET /api/v1/guests, warm (median and 95th percentile of RUNS calls over one
  keep-alive-less connection each), against `sharedroot guests --json`, what a script
  would otherwise run; goal <= 100 ms.
- Events of a job: for each step and progress event of `mnt2tst` jobs, the time from
  the moment the job's command wrote it to its arrival at an SSE client; goal <= 1 s.

- The dashboard's guest list (1000 rows) in headless Chromium: first contentful paint
  and load, after a first visit; goal: first paint <= 1 s.

Usage: python bench/bench_api.py [--runs N] [--jobs N] [--paints N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_reports import build

SHAREDROOT = [sys.executable, "-m", "sharedroot.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*SHAREDROOT, "--home", str(home), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("serve did not listen")


def get(url: str, secret: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return bytes(r.read())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def event_delays(base: str, secret: str, jobs: int) -> list[float]:
    delays: list[float] = []
    for _ in range(jobs):
        req = urllib.request.Request(
            base + "/api/v1/pipeline/mnt2tst",
            method="POST",
            headers={"Authorization": f"Bearer {secret}"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            job = json.loads(r.read())["id"]
        req = urllib.request.Request(
            f"{base}/api/v1/jobs/{job}/events", headers={"Authorization": f"Bearer {secret}"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                line = raw.decode()
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "at" in data:
                        delays.append(time.time() - data["at"])
    return delays


def paints(base: str, secret: str, runs: int) -> list[tuple[float, float]]:
    """(first contentful paint, load event) in seconds, per visit of /guests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    os.environ["SE_OFFLINE"] = "true"  # Debian's driver, named: nothing is downloaded
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(base + "/login")
        driver.find_element(By.ID, "token").send_keys(secret)
        driver.find_element(By.ID, "sign-in").click()
        driver.get(base + "/guests")  # the first: caches, templates
        found = []
        for _ in range(runs):
            driver.get(base + "/guests")
            fcp = driver.execute_script(
                "return performance.getEntriesByName('first-contentful-paint')[0].startTime"
            )
            load = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                " return n.loadEventEnd - n.startTime"
            )
            found.append((fcp / 1000, load / 1000))
        return found
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--paints", type=int, default=5, help="visits of the guest list")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        home = Path(tmp) / "site"
        build(home)
        secret = subprocess.run(
            [*SHAREDROOT, "--home", str(home), "token", "add", "bench", "--role", "operator"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        port = free_port()
        proc = serve(home, port)
        base = f"http://127.0.0.1:{port}"
        try:
            body = get(base + "/api/v1/guests", secret)  # the first: imports, caches
            assert len(json.loads(body)) >= 1000
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                get(base + "/api/v1/guests", secret)
                times.append(time.perf_counter() - t)
            cli = []
            for _ in range(5):
                t = time.perf_counter()
                subprocess.run(
                    [*SHAREDROOT, "--home", str(home), "guests", "--json"],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    env=os.environ,
                )
                cli.append(time.perf_counter() - t)
            med, p95, base_cli = (
                statistics.median(times),
                percentile(times, 0.95),
                statistics.median(cli),
            )
            size = len(body) / 1e6
            print(f"GET /api/v1/guests, 1000 clones, {size:.1f} MB JSON, {args.runs} warm calls")
            print(f"  median {med * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (goal <= 100 ms)")
            ratio = base_cli / med
            print(f"  sharedroot guests --json: {base_cli * 1000:.0f} ms ({ratio:.1f}x the API)")
            delays = event_delays(base, secret, args.jobs)
            print(f"job events, {len(delays)} from {args.jobs} mnt2tst jobs: written -> received")
            mid, worst = statistics.median(delays) * 1000, max(delays) * 1000
            print(f"  median {mid:.0f} ms, max {worst:.0f} ms (goal <= 1 s)")
            seen = paints(base, secret, args.paints)
            fcp = statistics.median(p[0] for p in seen)
            load = statistics.median(p[1] for p in seen)
            print(f"dashboard /guests, 1000 rows, Chromium, median of {len(seen)} visits")
            print(
                f"  first paint {fcp * 1000:.0f} ms, load {load * 1000:.0f} ms (goal: paint <= 1 s)"
            )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
