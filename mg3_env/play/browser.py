"""Launching the system's headless Chromium for ``mg3 play`` (the browser tests and ``bench/play.py``).

Playwright drives Debian's ``chromium`` (``apt-get install chromium``); it never downloads a browser.
The flags keep a headless run quiet and offline: no sandbox (containers), no GPU, no QUIC, no
first-run, background, component-update or sync traffic.
"""

from __future__ import annotations

import shutil

__all__ = ["HEADLESS_CHROMIUM_ARGS", "system_chromium"]

HEADLESS_CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def system_chromium() -> str | None:
    """The path of the system's ``chromium``, or None where it is not installed."""
    return shutil.which("chromium")
