"""Look at a report the way a person would: render it in headless Chromium, screenshot it, read the live DOM.

    python -m diffusion_align.evaluate.browser outputs/evaluate/.../report.html report.png

Uses a Chromium or Chrome binary found on ``PATH`` (or named by ``$DIFFALIGN_CHROMIUM``) through its own command
line (``--headless --screenshot`` / ``--dump-dom``): no Python package is needed. On Debian/Ubuntu:
``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
BROWSER_ENV = "DIFFALIGN_CHROMIUM"


def find_browser() -> str | None:
    """The Chromium/Chrome executable to use: ``$DIFFALIGN_CHROMIUM`` if set, else the first of
    :data:`BROWSER_NAMES` on ``PATH``; ``None`` when there is none."""
    configured = os.environ.get(BROWSER_ENV)
    if configured:
        if shutil.which(configured) is None:
            raise FileNotFoundError(f"${BROWSER_ENV}={configured!r} is not an executable")
        return shutil.which(configured)
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


def _run_headless(page: Path, arguments: list[str], browser: str | None, timeout: float) -> str:
    """Run the browser headless on ``page`` with ``arguments``; returns stdout, raises with stderr on failure."""
    executable = browser or find_browser()
    if executable is None:
        raise FileNotFoundError(f"no Chromium/Chrome found (looked for {BROWSER_NAMES} on PATH and ${BROWSER_ENV})")
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such HTML file")
    with tempfile.TemporaryDirectory(prefix="diffalign-chromium-") as profile:
        command = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--force-device-scale-factor=1", "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
            f"--user-data-dir={profile}", *arguments, page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=profile)
    if done.returncode != 0:
        raise RuntimeError(f"{executable} failed on {page} (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(page: str | Path, output: str | Path, width: int = 1400, height: int = 1000,
               browser: str | None = None, timeout: float = 120.0) -> Path:
    """Render ``page`` at ``width`` x ``height`` CSS pixels and save a PNG screenshot to ``output``."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    _run_headless(Path(page), [f"--window-size={width},{height}", f"--screenshot={output}"], browser, timeout)
    if not output.is_file():
        raise RuntimeError(f"the browser exited cleanly but wrote no screenshot at {output}")
    return output


def rendered_dom(page: str | Path, browser: str | None = None, timeout: float = 120.0) -> str:
    """The page's DOM as serialised HTML after its scripts ran."""
    return _run_headless(Path(page), ["--dump-dom"], browser, timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot an HTML report with headless Chromium.")
    parser.add_argument("page", type=Path, help="the report.html to render")
    parser.add_argument("output", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    print(screenshot(args.page, args.output, args.width, args.height))


if __name__ == "__main__":
    main()
