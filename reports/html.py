"""A static HTML summary (no server, no scripts): the tables, their notes and the plots.

Why static: it must open from `file://` on a laptop or a CI artifact, years later.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Sequence
from pathlib import Path

from reports.plots import Plot
from reports.tables import FROZEN, Missing, Table, fmt

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 12px; }
caption { caption-side: top; text-align: left; padding: 0.3em 0; max-width: 1100px; }
caption b { font-size: 15px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 7px; text-align: right;
         white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
td.missing { color: #999; }
td.run code { font-size: 11px; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 1em; }
.notes { font-size: 12px; color: #555; margin: 0 0 2em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
"""


def table_html(table: Table) -> str:
    """One `<table id=tableN>` with its caption and the footnotes of its empty cells."""
    notes = table.notes()
    head = "".join(f'<th class="{"text" if c.fmt == "text" else "num"}">{html.escape(c.header)}'
                   f"</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for c in table.columns:
            value = row.get(c.key)
            text = html.escape(fmt(value, c.fmt, notes))
            classes = ["text" if c.fmt == "text" else "num", c.key]
            if isinstance(value, Missing):
                classes.append("missing")
                text = f'<span title="{html.escape(value.reason)}">{text}</span>'
            elif c.key == "run":  # full id (greppable), the selection on a second line
                run_id, _, how = text.partition(" ")
                text = f"<code>{run_id}</code><br><small>{how}</small>"
            cells.append(f'<td class="{" ".join(classes)}">{text}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    footnotes = "<br>".join(f"({letter}) {html.escape(reason)}"
                            for reason, letter in notes.items())
    return (f'<section class="scroll"><table id="{table.name}"><caption>'
            f"<b>{html.escape(table.title)}</b><br>{html.escape(table.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            f'<p class="notes">{footnotes}</p></section>')


def plot_html(plot: Plot, out: Path) -> str:
    if plot.png is None:
        return f'<p class="notes"><b>{html.escape(plot.title)}</b>: {html.escape(plot.note)}</p>'
    src = Path(os.path.relpath(plot.png, out)).as_posix()
    pdf = Path(os.path.relpath(plot.pdf, out)).as_posix() if plot.pdf else src
    return (f'<figure id="plot-{plot.name}"><img src="{html.escape(src)}" '
            f'alt="{html.escape(plot.title)}"><figcaption>{html.escape(plot.title)} '
            f'(<a href="{html.escape(pdf)}">PDF</a>)</figcaption></figure>')


def write_page(tables: Sequence[Table], plots: Sequence[Plot], out: Path, tracking_uri: str,
               experiment: str, mode: str, problem: str = "") -> Path:
    """Write `out/index.html`; plot paths are made relative so the folder can be moved."""
    out.mkdir(parents=True, exist_ok=True)
    datasets = sorted({p.run.dataset for t in tables for _, p in t.picks if p.run is not None})
    warn = ""
    if problem:
        warn = f'<p class="warn">{html.escape(problem)}: every cell is "—" with its reason.</p>'
    elif any(d != "ek100" for d in datasets):
        warn = (f'<p class="warn">Runs on {html.escape(", ".join(datasets))}: not EK100, so '
                "the differences to the published values mean nothing.</p>")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MambaVL report</title>
<style>{STYLE}</style></head><body>
<h1>MambaVL: our runs beside the published tables</h1>
<p>Experiment <code>{html.escape(experiment)}</code> at <code>{html.escape(tracking_uri)}</code>,
selection <code>{html.escape(mode)}</code>, generated {stamp}. Dataset(s) of the runs shown:
<b>{html.escape(", ".join(datasets) or "none")}</b>. Published values: the MambaVL paper
(arXiv 2409.11513), Tables 1, 3 and 4, each row naming its source; "—" cells carry their
reason as a footnote (hover for it). The information-sources table sets the Mamba head on
video alone, on the questions alone and on both beside a text probe of the questions: the
questions are written from each clip's own labels. {html.escape(FROZEN)}</p>
{warn}
<h2>Tables</h2>
{"".join(table_html(t) for t in tables)}
<h2>Plots</h2>
{"".join(plot_html(p, out) for p in plots)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
