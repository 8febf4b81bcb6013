"""reports stage: the paper's tables and plots rebuilt from the MLflow store.

`python -m reports.tables` picks one run per table row and protocol by its tags, writes
Markdown, LaTeX and CSV (per metric ours / the MambaVL paper's published value in
`reports.paper` / Δ, each row's run as a numbered marker linked to the MLflow UI, empty cells
explained once per table), the plots (`reports.plots`) and a static HTML page
(`reports.html`), plus an information-sources table (the Mamba head on video alone, questions
alone and both, beside the question audit's text probe). Captions always name the dataset
and the protocol and say that ours are heads on frozen features, so demo numbers never pass
for EK100. `python -m reports.screenshots` takes PNGs of the page and of a console transcript.
"""
