"""Headless Chromium for the tests of the HTML pages (Debian's `chromium`; the tests skip without it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(args: list[str], tmp_path: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium with a throwaway profile under ``tmp_path`` (no network, no first-run work)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
