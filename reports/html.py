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
from reports.tables import DEFAULT_MLFLOW_URL, FROZEN, Table, groups, layout, legend_line

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; padding: 0 1.5em;
       max-width: 1400px; color: #222; }
p, .notes, .caption { max-width: 1000px; }
section.table { margin: 0 0 2.2em; }
section.table h3 { font-size: 15px; margin: 1.2em 0 0.2em; }
.caption { font-size: 12.5px; color: #444; margin: 0 0 0.4em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.3em 0; font-size: 12.5px; }
caption { display: none; }
th, td { padding: 3px 8px; text-align: right; white-space: nowrap; }
thead th { background: #f3f3f3; font-weight: 600; }
thead th.group { text-align: center; }
thead tr.groups th { border-bottom: 1px solid #bbb; }
thead tr:last-child th { border-bottom: 2px solid #888; }
tbody tr { border-bottom: 1px solid #e4e4e4; }
tbody tr:hover { background: #fafafa; }
td.text, th.text { text-align: left; }
td.text { white-space: normal; min-width: 7em; max-width: 22em; }
td.missing { color: #aaa; }
th.group-start, td.group-start { border-left: 1px solid #ddd; }
td.delta { color: #555; }
sup a { text-decoration: none; font-weight: 600; padding: 0 1px; }
.notes { font-size: 12px; color: #555; margin: 0.3em 0 0; }
ol.runs { font-size: 12px; color: #555; margin: 0.2em 0 0; padding-left: 1.8em;
          columns: 2 420px; }
ol.runs code { font-size: 11.5px; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; max-width: 1000px; }
"""


def table_html(table: Table, mlflow_url: str = DEFAULT_MLFLOW_URL) -> str:
    """One table: title, caption, grouped header, cells ("—" with its cause as a tooltip),
    each row's run marker linked to its MLflow page, then the legend and the run notes."""
    shown = table.shown
    starts = set()
    first = 0
    for label, span in groups(table):
        if label:
            starts.add(first)
        first += span
    spans = groups(table)
    head = ""
    if any(label for label, _ in spans):
        head += '<tr class="groups">' + "".join(
            f'<th colspan="{span}" class="group">{html.escape(label)}</th>'
            for label, span in spans) + "</tr>"
    head += "<tr>" + "".join(
        f'<th class="{"num" if c.fmt != "text" else "text"}'
        f'{" group-start" if i in starts else ""}">{html.escape(c.header)}</th>'
        for i, c in enumerate(shown)) + "</tr>"
    body = []
    for cells in layout(table):
        tds = []
        for i, (cell, col) in enumerate(zip(cells, shown, strict=True)):
            classes = ["num" if cell.numeric else "text", col.fmt, col.key]
            if i in starts:
                classes.append("group-start")
            text = html.escape(cell.text)
            if cell.missing is not None:
                classes.append("missing")
                text = f'<span title="{html.escape(cell.missing.reason)}">{text}</span>'
            if cell.note is not None:
                text += (f' <sup><a href="{html.escape(cell.note.url(mlflow_url))}" '
                         f'title="run {cell.note.run.run_id}">{cell.note.number}</a></sup>')
            tds.append(f'<td class="{" ".join(classes)}">{text}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    legend = legend_line(table)
    runs = "".join(
        f'<li value="{n.number}"><a href="{html.escape(n.url(mlflow_url))}">'
        f"<code>{html.escape(n.run.run_id[:8])}</code></a> "
        f"{html.escape(n.text().removeprefix(f'run {n.run.run_id[:8]} '))}</li>"
        for n in table.runs())
    return (f'<section class="table" id="section-{table.name}"><h3>{html.escape(table.title)}'
            f'</h3><p class="caption">{html.escape(table.caption)}</p>'
            f'<div class="scroll"><table id="{table.name}"><caption>{html.escape(table.title)}'
            f"</caption><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
            + (f'<p class="notes">{html.escape(legend)}</p>' if legend else "")
            + (f'<ol class="runs">{runs}</ol>' if runs else "") + "</section>")


def plot_html(plot: Plot, out: Path) -> str:
    if plot.png is None:
        return f'<p class="notes"><b>{html.escape(plot.title)}</b>: {html.escape(plot.note)}</p>'
    src = Path(os.path.relpath(plot.png, out)).as_posix()
    pdf = Path(os.path.relpath(plot.pdf, out)).as_posix() if plot.pdf else src
    return (f'<figure id="plot-{plot.name}"><img src="{html.escape(src)}" '
            f'alt="{html.escape(plot.title)}"><figcaption><b>{html.escape(plot.title)}</b>'
            + (f": {html.escape(plot.note)}" if plot.note else "")
            + f' (<a href="{html.escape(pdf)}">PDF</a>)</figcaption></figure>')


def write_page(tables: Sequence[Table], plots: Sequence[Plot], out: Path, tracking_uri: str,
               experiment: str, mode: str, problem: str = "",
               mlflow_url: str = DEFAULT_MLFLOW_URL) -> Path:
    """Write `out/index.html`; plot paths are made relative so the folder can be moved."""
    out.mkdir(parents=True, exist_ok=True)
    datasets = sorted({p.run.dataset for t in tables for _, p in t.picks if p.run is not None})
    warn = ""
    if problem:
        warn = f'<p class="warn">{html.escape(problem)}: every cell of ours is "—".</p>'
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
<b>{html.escape(", ".join(datasets) or "none")}</b>. Per metric: ours, the published
value (pub., the MambaVL paper, arXiv 2409.11513, Tables 1, 3 and 4) and Δ = ours − pub., in %.
A row's numbered marker opens its run in the MLflow UI at
<a href="{html.escape(mlflow_url)}">{html.escape(mlflow_url)}</a> (<code>make mlflow-ui</code>);
"—" is explained under each table (hover a cell for the exact cause). The
information-sources table sets the Mamba head on video alone, on the questions alone and on
both beside a text probe of the questions: the questions are written from each clip's own
labels. {html.escape(FROZEN)}</p>
{warn}
<h2>Tables</h2>
{"".join(table_html(t, mlflow_url) for t in tables)}
<h2>Plots</h2>
{"".join(plot_html(p, out) for p in plots)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
