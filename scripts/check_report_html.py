"""Open report/index.html in headless Chromium with no network: it must render content and request nothing.

    python3 scripts/check_report_html.py                    # report/index.html
    python3 scripts/check_report_html.py path/to/index.html --screenshot shot.png

Chromium (Debian: ``apt-get install chromium``) loads the page from a file:// URL with a net log; the check
fails when the net log records a request of the page to any URL that is not the page itself or a ``data:``
image (the browser's own background requests are told apart by their initiator), or
when the screenshot is blank (a page that rendered nothing has one colour). Exit status 0: ok; 1: a check
failed; 2: no Chromium on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def requested_urls(netlog: Path) -> list[str]:
    """Every URL the page asked for: the net log's URL_REQUEST_START_JOB events with the page as their
    initiator or network partition (a file:// page's origin is opaque: ``null``). The browser's own
    background requests (time service, account checks) carry ``not an origin`` and are not the page's."""
    text = netlog.read_text(errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text += "]}"                              # Chromium may leave the log's event list open
    log = json.loads(text)
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for e in log.get("events", []):
        p = e.get("params") or {}
        if e.get("type") != start or "url" not in p:
            continue
        if p.get("initiator") != "not an origin" or "file://" in str(p.get("network_isolation_key", "")):
            urls.append(p["url"])
    return urls


def check(page: Path, screenshot: Path, width: int = 1200, height: int = 1600, timeout: int = 120) -> list[str]:
    """The problems found (empty: the page rendered offline with content and no request)."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError("no Chromium found (" + ", ".join(BROWSERS) + "); on Debian: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "netlog.json"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={tmp}/profile", f"--log-net-log={netlog}", "--net-log-capture-mode=Default",
               f"--window-size={width},{height}", f"--screenshot={screenshot}", page.resolve().as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        problems = []
        if not screenshot.is_file():
            return [f"no screenshot written (chromium exit {r.returncode}): {r.stderr[-500:]}"]
        px = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
        if px.std() < 5 or len(np.unique(px)) < 16:
            problems.append(f"the screenshot is blank (std {px.std():.1f}, {len(np.unique(px))} grey levels)")
        if netlog.is_file():
            own = page.resolve().as_uri()
            for url in requested_urls(netlog):
                if url != own and not url.startswith("data:"):
                    problems.append(f"network request: {url}")
        else:
            problems.append("chromium wrote no net log: requests could not be checked")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", nargs="?", default="report/index.html")
    ap.add_argument("--screenshot", default=None, help="keep the screenshot here (default: a temporary file)")
    args = ap.parse_args(argv)
    page = Path(args.page)
    if not page.is_file():
        print(f"check_report_html: {page} not found: run the report stage (cxrbench report)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(args.screenshot) if args.screenshot else Path(tmp) / "shot.png"
        try:
            problems = check(page, shot)
        except FileNotFoundError as err:
            print(f"check_report_html: {err}", file=sys.stderr)
            return 2
    for p in problems:
        print(f"check_report_html: {p}", file=sys.stderr)
    if not problems:
        print(f"check_report_html: {page} renders offline with content and requests nothing")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
