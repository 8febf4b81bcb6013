"""reports stage: the paper's tables and plots rebuilt from the MLflow store.

`python -m reports.tables` picks one run per table row and protocol by its tags, writes
Markdown, LaTeX and CSV (ours beside the MambaVL paper's published values in `reports.paper`,
with differences, run ids and the reason for every empty cell), the plots (`reports.plots`)
and a static HTML page (`reports.html`), plus an information-sources table (the Mamba head
on video alone, questions alone and both, beside the question audit's text probe). Captions
always name the dataset and the protocol and say that ours are heads on frozen features, so
demo numbers never pass for EK100.
"""
