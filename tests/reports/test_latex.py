"""The LaTeX tables compile as they are: checked by structure always, by pylatexenc's parser
when it is installed, and by pdflatex (with booktabs) where it exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.tables import build_tables, load_runs, tex_escape, to_latex
from tests.reports.test_tables import EXPERIMENT, fake_cost, log_run

SPECIALS = "&%$#_{}~^\\"


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every table's LaTeX, from runs whose names need escaping (underscores, a sweep)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("latex")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    log_run(client, exp, fusion="mamba", backbone="orvit", best=0.4)
    log_run(client, exp, fusion="mlp_authors", backbone="orvit", best=0.3, start=1,
            extra_tags={"protocol": "authors", "optuna.study": "mlp_50%", "optuna.trial": "3"})
    log_run(client, exp, fusion="mlp", backbone="vitl", features="video", best=0.2, start=2)
    log_run(client, exp, fusion="mamba", backbone="demo", features="questions", start=3)
    runs, _ = load_runs(uri, EXPERIMENT)
    return [to_latex(t) for t in build_tables(runs, "best", cost=_cost)]


def _cost(backbone: str):
    return fake_cost("vitl" if backbone == "demo" else backbone)


def _unescaped(text: str, char: str) -> list[int]:
    """Positions of `char` not preceded by a backslash (an escaped `\\\\` counts as escaped)."""
    return [m.start() for m in re.finditer(rf"(?<!\\){re.escape(char)}", text)]


def check_structure(tex: str) -> None:
    """What pdflatex would trip on, checked without it: ASCII only, balanced braces and
    math, booktabs rules, every body row with as many cells as the tabular spec."""
    assert tex.isascii(), [ch for ch in tex if not ch.isascii()]
    assert tex.startswith("\\begin{table*}") and tex.rstrip().endswith("\\end{table*}")
    depth = 0
    for i, ch in enumerate(tex):
        if ch in "{}" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            assert depth >= 0, tex[max(0, i - 60):i + 1]
    assert depth == 0
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1, rule
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex)
    assert spec, "no tabular spec"
    width = len(spec.group(1))
    body = tex[spec.end():tex.index("\\end{tabular}")]
    rows = [line for line in body.splitlines() if line.rstrip().endswith("\\\\")]
    assert len(rows) >= 2
    for line in rows:
        assert not _unescaped(line, "%") and not _unescaped(line, "#"), line
        assert len(_unescaped(line, "$")) % 2 == 0, line  # math opened and closed
        outside = re.sub(r"\$[^$]*\$", "", line)
        assert not _unescaped(outside, "_") and not _unescaped(outside, "^"), line
        spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", line)]
        cells = len(_unescaped(line, "&")) + 1
        assert cells - len(spans) + sum(spans) == width, (width, line)
    caption = re.search(r"\\caption\{(.*)\}\n", tex)
    assert caption and not _unescaped(caption.group(1), "%") and \
        len(_unescaped(caption.group(1), "$")) % 2 == 0


def test_escape_covers_every_special_and_non_ascii() -> None:
    text = tex_escape("a_b & 50% #1 $x {y} ~ ^ \\ — − × Δ ² § é")
    assert text.isascii()
    for ch in "&%#_":
        assert not _unescaped(text, ch), ch
    assert "\\textbackslash{}" in text and "\\textasciicircum{}" in text and "e" in text


def test_tables_are_well_formed(tables: list[str]) -> None:
    for tex in tables:
        check_structure(tex)
    assert any("\\multicolumn{3}{c}{verb top-1}" in tex for tex in tables)
    assert any("mlp\\_50\\%" in tex for tex in tables)  # a sweep's name, escaped
    assert all("\\cmidrule(lr)" in tex for tex in tables)


def test_structure_check_catches_a_broken_table(tables: list[str]) -> None:
    """The checker fails on the mistakes it is there for."""
    good = tables[0]
    row = next(line for line in good.splitlines() if line.startswith("MeMViT"))
    for broken in (good.replace(row, row.replace(" & ", " ", 1)),  # a cell short
                   good.replace(row, row.replace("MeMViT", "MeMViT 50%")),  # unescaped %
                   good.replace("\\toprule", "\\hline"),
                   good.replace(row, row.replace("MeMViT", "Me{MViT"))):
        with pytest.raises(AssertionError):
            check_structure(broken)


def test_pylatexenc_parses_every_table(tables: list[str]) -> None:
    walker_module = pytest.importorskip("pylatexenc.latexwalker")
    for tex in tables:
        walker = walker_module.LatexWalker(tex, tolerant_parsing=False)
        nodes, _, _ = walker.get_latex_nodes()
        envs = [n for n in nodes if n.isNodeType(walker_module.LatexEnvironmentNode)]
        assert [e.environmentname for e in envs] == ["table*"]


def test_pdflatex_compiles_every_table(tables: list[str], tmp_path: Path) -> None:
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex not installed (Debian: texlive-latex-base texlive-latex-recommended)")
    inputs = []
    for i, tex in enumerate(tables):
        (tmp_path / f"t{i}.tex").write_text(tex, encoding="ascii")
        inputs.append(f"\\input{{t{i}.tex}}\\clearpage")
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
        + "\n".join(inputs) + "\n\\end{document}\n")
    result = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 10_000
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Missing character" not in log and "Undefined control sequence" not in log
