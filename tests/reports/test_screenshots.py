"""reports.screenshots: a page and a console transcript become real PNGs in headless Chromium
(skipped where no Chromium is installed); the transcript cleaning runs everywhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reports.screenshots import BROWSERS, console_page, main, plain_console
from tests.cli import one_error_line

ROOT = Path(__file__).resolve().parents[2]


def needs_chromium() -> None:
    if not any(shutil.which(name) for name in BROWSERS):
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")


def png_size_and_colours(path: Path) -> tuple[tuple[int, int], int]:
    """A valid PNG's size and how many colours it holds (PIL decodes every byte)."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        return image.size, len(colours) if colours else 1 << 20


def test_transcript_is_cleaned_as_a_terminal_shows_it() -> None:
    raw = ("Script started on 2026-12-02 11:02:06+00:00 [COMMAND=\"python -m fusion.train\"]\n"
           "\x1b[1mmambavl\x1b[0m train  device cpu\r\n"
           "epoch 1/2:  10%|#         | 1/10\repoch 1/2: 100%|##########| 10/10\n"
           "\x1b[32mepoch 1/2  loss 2.31  action@1 41.2\x1b[0m\n\n\n"
           "Script done on 2026-12-02 11:03:29+00:00 [COMMAND_EXIT_CODE=\"0\"]\n")
    text = plain_console(raw)
    assert text == ("mambavl train  device cpu\nepoch 1/2: 100%|##########| 10/10\n"
                    "epoch 1/2  loss 2.31  action@1 41.2\n")
    page = console_page(raw, "t.txt")
    assert "\x1b" not in page and "&lt;" in console_page("a <b>", "")


def test_page_and_console_become_pngs_of_the_requested_width(tmp_path: Path) -> None:
    needs_chromium()
    page = tmp_path / "index.html"
    page.write_text("<!DOCTYPE html><html><body style='margin:0'><h1>Report</h1>"
                    "<table><tr><th>verb</th><td>41.2</td></tr></table>"
                    "<div style='height:300px;background:#c33'></div></body></html>")
    transcript = tmp_path / "console.txt"
    transcript.write_text("mambavl train\n" + "".join(f"epoch {i}/40  loss {3 - i / 20:.2f}\n"
                                                      for i in range(1, 41)))
    out = tmp_path / "shots"
    written = main(["--page", str(page), "--console", str(transcript), "--out", str(out),
                    "--width", "900", "--height", "700"])
    assert written == [out / "report.png", out / "console.png"]
    size, colours = png_size_and_colours(out / "report.png")
    assert size == (900, 700) and colours > 2  # white page, black text, the red block
    size, colours = png_size_and_colours(out / "console.png")
    assert size[0] == 900 and size[1] >= 40 * 18  # as tall as its 41 lines
    assert colours > 2  # dark background and light text, antialiased


def test_missing_page_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reports.screenshots", "--page",
                             str(tmp_path / "absent.html"), "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT)
    line = one_error_line(result)
    assert "absent.html" in line and "reports.tables" in line
    result = subprocess.run([sys.executable, "-m", "reports.screenshots", "--out",
                             str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert "--page" in one_error_line(result)
