"""PNG screenshots of the HTML report and of a training console, through headless Chromium.

    python -m reports.screenshots --page reports/out/index.html --console transcript.txt \
        --out docs/screenshots

Why: the README shows what a user will see, and a picture taken by a command from real
output stays honest when retaken after a change. The page is rendered as a browser shows it;
a console transcript (plain text; ANSI colour codes and progress-bar redraws are resolved as
a terminal would) is set in a dark terminal-like `<pre>` page and rendered the same way.
Writes `report.png` and `console.png` into `--out`.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from features.errors import HarnessError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1")
"""Offline and quiet: no update, sync or network probes (the CI machine has no network)."""
SCRIPT_LINE = re.compile(r"^Script (started|done) on \d{4}-\d\d-\d\d")
"""The first and last lines `script(1)` adds to a transcript it records (not the program's)."""
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class ScreenshotError(HarnessError, RuntimeError):
    """No browser, or the browser wrote no picture; the message says what to do."""


def find_browser(name: str | None = None) -> str:
    """The Chromium to use: `name` (a path or a command), else the first of BROWSERS on PATH."""
    for candidate in [name] if name else BROWSERS:
        found = shutil.which(candidate)
        if found:
            return found
    raise ScreenshotError(f"no headless Chromium found ({name or ', '.join(BROWSERS)}): install "
                          f"it (Debian: apt-get install chromium) or pass --browser PATH")


def screenshot(page: Path, png: Path, width: int, height: int,
               browser: str | None = None) -> Path:
    """Render `page` (a local HTML file) at `width`×`height` CSS pixels into `png`."""
    if not page.is_file():
        raise ScreenshotError(f"{page}: no such page; build it first (python -m reports.tables)")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [find_browser(browser), *FLAGS, f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
                   page.resolve().as_uri()]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"{page}: Chromium took over 120 s to render it") from None
    if result.returncode != 0 or not png.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScreenshotError(f"{page}: Chromium wrote no screenshot (exit "
                              f"{result.returncode}: {last})")
    return png


def plain_console(text: str) -> str:
    """What a terminal shows of a transcript: ANSI codes dropped, each `\\r` redraw (a
    progress bar) replaced by its last state, `script(1)`'s own first and last lines and
    trailing blank lines removed."""
    lines = []
    for line in ANSI.sub("", text).replace("\r\n", "\n").split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        if not (parts and SCRIPT_LINE.match(parts[-1])):
            lines.append(parts[-1] if parts else "")
    return "\n".join(lines).strip("\n") + "\n"


LINE_PX = 18
PAD_PX = 16


def console_page(text: str, title: str = "") -> str:
    """A dark terminal-like HTML page holding the transcript in a `<pre>`."""
    heading = (f'<div class="bar">{html.escape(title)}</div>' if title else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "console")}</title>
<style>
html, body {{ margin: 0; background: #1e1e1e; }}
.bar {{ background: #333; color: #ccc; font: 13px system-ui, sans-serif; padding: 6px 14px; }}
pre {{ margin: 0; padding: {PAD_PX}px; color: #e6e6e6; white-space: pre-wrap;
       font: 14px/{LINE_PX}px "DejaVu Sans Mono", "Liberation Mono", monospace; }}
</style></head><body>{heading}<pre>{html.escape(plain_console(text))}</pre></body></html>
"""


def console_screenshot(transcript: Path, png: Path, width: int, browser: str | None = None,
                       title: str | None = None) -> Path:
    """The transcript as a console picture, as tall as its lines (wrapped ones included)."""
    try:
        text = transcript.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ScreenshotError(f"{transcript}: no such transcript; record one with "
                              f"`COMMAND 2>&1 | tee {transcript}`") from None
    columns = max(20, (width - 2 * PAD_PX) // 10)  # 14px monospace: 8.4-9.6 px a character
    rows = sum(max(1, -(-len(line) // columns)) for line in plain_console(text).splitlines())
    height = rows * LINE_PX + 2 * PAD_PX + 32
    with tempfile.TemporaryDirectory(prefix="console-") as folder:
        page = Path(folder) / "console.html"
        page.write_text(console_page(text, title or transcript.name), encoding="utf-8")
        return screenshot(page, png, width, height, browser)


@dataclass
class ScreenshotsConfig:
    """PNG screenshots of the report page and of a console transcript (headless Chromium)."""

    page: Path | None = None
    """The report's `index.html` (python -m reports.tables writes reports/out/index.html)."""
    console: Path | None = None
    """A training console transcript, e.g. `python -m fusion.train ... 2>&1 | tee t.txt`, or
    recorded on a terminal with `script -q -c "python -m fusion.train ..." t.txt`."""
    console_title: str | None = None
    """The console picture's title bar, e.g. the command; default: the transcript's name."""
    out: Path = Path("docs/screenshots")
    width: int = 1280
    """Window width in CSS pixels (the PNGs' width)."""
    height: int = 2000
    """Window height of the page screenshot (the console's follows its line count)."""
    browser: str | None = None
    """Chromium to use; default: the first of chromium, chromium-browser, google-chrome."""


def main(args: Sequence[str] | None = None) -> list[Path]:
    from features.config import cli

    config = cli(ScreenshotsConfig, args=args)
    if config.page is None and config.console is None:
        raise ScreenshotError("nothing to take: pass --page reports/out/index.html and/or "
                              "--console TRANSCRIPT.txt")
    written = []
    if config.page is not None:
        written.append(screenshot(config.page, config.out / "report.png", config.width,
                                  config.height, config.browser))
    if config.console is not None:
        written.append(console_screenshot(config.console, config.out / "console.png",
                                          config.width, config.browser, config.console_title))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
