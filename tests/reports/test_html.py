"""The static report page renders in headless Chromium and shows the four tables."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.tables import main
from tests.reports.test_tables import EXPERIMENT, log_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    return found


def render(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("html")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    ids = {fusion: log_run(client, exp, fusion=fusion, backbone="vitl", best=0.2 + 0.05 * i,
                           start=i, epochs=4)
           for i, fusion in enumerate(("mlp", "transformer_6x4", "mamba"))}
    out = root / "out"
    main(["--tracking-uri", uri, "--out", str(out), "--benchmark", str(root / "absent.json")])
    return {"path": out / "index.html", "ids": ids, "root": root}


def test_page_renders_tables_in_chromium(page: dict) -> None:
    dom = render(page["path"], page["root"] / "profile", "--dump-dom").stdout
    for n in range(1, 5):
        assert re.search(rf'<table id="table{n}">\s*<caption>', dom), f"table{n} not rendered"
    assert dom.count("<tr>") >= 4 + 6 + 2 + 4 + 9  # header rows + body rows of the 4 tables
    assert "synthetic-demo" in dom and "NOT EK100" in dom
    assert page["ids"]["mamba"] in dom
    assert "no finished run tagged fusion=transformer_12x12" in dom  # the "—" tooltip
    assert 'src="plots/cost_accuracy.png"' in dom
    assert "absent.json not found" in dom  # the skipped scaling plot says why


def test_page_screenshot(page: dict) -> None:
    shot = page["root"] / "shot.png"
    render(page["path"], page["root"] / "profile2", "--window-size=1400,1800",
           f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # tables and figures, not a blank page


MEASURE = ("<script>document.body.setAttribute('data-measured', "
           "document.documentElement.scrollWidth + ':' + [...document.querySelectorAll('.scroll')]"
           ".map(e => e.scrollWidth > e.clientWidth ? 'S' : '-').join(''));</script></body>")


@pytest.mark.parametrize("width", [1000, 1400])
def test_page_fits_the_window_without_cutting_columns(page: dict, width: int) -> None:
    """The page never scrolls sideways; a table wider than the window scrolls inside its own
    container (so no column is cut off), and at 1400 px every table fits whole."""
    measured = page["path"].with_name(f"measure-{width}.html")
    measured.write_text(page["path"].read_text().replace("</body>", MEASURE))
    dom = render(measured, page["root"] / f"profile-{width}", f"--window-size={width},1200",
                 "--virtual-time-budget=2000", "--dump-dom").stdout
    found = re.search(r'data-measured="(\d+):([S-]+)"', dom)
    assert found, "measuring script did not run"
    page_width, tables = int(found.group(1)), found.group(2)
    assert page_width <= width and len(tables) == 5
    if width == 1400:
        assert tables == "-----", tables
    links = re.findall(r'<sup><a href="http://127\.0\.0\.1:5000/#/experiments/\d+/runs/'
                       r'([0-9a-f]{32})"', dom)  # each run marker opens its MLflow run page
    assert set(page["ids"].values()) <= set(links)
