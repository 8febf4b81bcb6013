"""reports.tables against a real (temporary SQLite) MLflow store with fusion.train's schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reports import paper
from reports.tables import (
    Missing,
    build_tables,
    load_runs,
    main,
    to_csv,
    to_latex,
    to_markdown,
)

EXPERIMENT = "mambavl"
VNA = ("verb", "noun", "action")


def log_run(client, experiment_id: str, *, fusion: str, backbone: str, task: str = "recognition",
            features: str = "video+questions", dataset: str = "synthetic-demo",
            best: float = 0.3, start: int = 0, status: str = "FINISHED",
            parent: str | None = None, epochs: int = 3, extra_tags: dict | None = None) -> str:
    """One run as fusion.train/fusion.tracking log it: tags, per-epoch curves, best_*, cost."""
    tags = {"fusion": fusion, "backbone": backbone, "task": task, "features": features,
            "text_model": "demo", "dataset": dataset, "git_revision": "abc1234",
            "manifest.video": "v" * 8, "manifest.text": "t" * 8, **(extra_tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, start_time=1_700_000_000_000 + start, tags=tags,
                            run_name=f"{fusion}-{backbone}-{task}")
    run_id = run.info.run_id
    kind = "top1" if task == "recognition" else "recall5"
    for epoch in range(1, epochs + 1):
        client.log_metric(run_id, "train_loss", 3.0 / epoch, step=epoch)
        for i, head in enumerate(VNA):
            client.log_metric(run_id, f"{head}_{kind}", best * epoch / epochs + 0.1 * (2 - i),
                              step=epoch)
    for i, head in enumerate(VNA):
        client.log_metric(run_id, f"best_{head}_top1", best + 0.1 * (2 - i))
        client.log_metric(run_id, f"best_{head}_top5", min(1.0, 2 * best))
        client.log_metric(run_id, f"best_{head}_recall5", best + 0.05 * (2 - i))
    sizes = {"mlp": 1.0e6, "transformer_6x4": 20e6, "transformer_12x12": 94e6, "mamba": 9e6}
    client.log_metric(run_id, "params", sizes.get(fusion, 5.6e6))
    client.log_metric(run_id, "flops", 40 * sizes.get(fusion, 5.6e6))
    client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store holding the cases selection must get right; returns the URI and run ids."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    ids = {
        # two MambaVL runs on ViT-L: the older is better (best), the newer is latest
        "mamba_best": log_run(client, exp, fusion="mamba", backbone="vitl", best=0.40, start=1),
        "mamba_latest": log_run(client, exp, fusion="mamba", backbone="vitl", best=0.30,
                                start=5),
        # a killed (pruned) run with a higher value must never be picked
        "killed": log_run(client, exp, fusion="mamba", backbone="vitl", best=0.90, start=9,
                          status="KILLED"),
        # a pruned sweep trial ends FINISHED with tag pruned=true: never picked either
        "pruned": log_run(client, exp, fusion="mamba", backbone="vitl", best=0.95, start=10,
                          extra_tags={"pruned": "true"}),
        "alone": log_run(client, exp, fusion="mlp", backbone="vitl", features="video",
                         best=0.20, start=2),
        "mlp": log_run(client, exp, fusion="mlp", backbone="vitl", best=0.25, start=3),
        "t6x4": log_run(client, exp, fusion="transformer_6x4", backbone="vitl", best=0.28,
                        start=4),
        "ant": log_run(client, exp, fusion="mamba", backbone="orvit", task="anticipation",
                       best=0.15, start=6),
        "ek100": log_run(client, exp, fusion="mamba", backbone="vitb", dataset="ek100",
                         best=0.45, start=7),
    }
    # a sweep: the parent run (summary) must be left out, its trial kept
    parent = client.create_run(exp, start_time=1_700_000_000_100, run_name="sweep",
                               tags={"task": "recognition", "fusion": "mamba",
                                     "backbone": "vitl", "features": "video+questions",
                                     "dataset": "synthetic-demo"})
    client.log_metric(parent.info.run_id, "best_action_top1", 0.99)
    client.set_terminated(parent.info.run_id)
    ids["parent"] = parent.info.run_id
    ids["trial"] = log_run(client, exp, fusion="mamba", backbone="vitl", best=0.35, start=8,
                           parent=parent.info.run_id,
                           extra_tags={"optuna.study": "mamba-vitl", "optuna.trial": "0"})
    # a sweep parent as sweeps.tracking opens it (tag sweep=true), before any trial finished
    lone = client.create_run(exp, start_time=1_700_000_000_200, run_name="sweep-2",
                             tags={"sweep": "true", "task": "recognition", "fusion": "mamba",
                                   "backbone": "vitl", "features": "video+questions"})
    client.log_metric(lone.info.run_id, "best_action_top1", 0.98)
    client.set_terminated(lone.info.run_id)
    ids["sweep_parent"] = lone.info.run_id
    return {"uri": uri, "ids": ids, "root": root}


def fake_cost(backbone: str):
    """Backbone costs without counting FLOPs (main() below uses the real extract.backbones)."""
    known = {"vitl": (303.2e6, 4129.5e9, "counted by us on a 16×224² clip"),
             "vitb": (85.8e6, 899.3e9, "counted by us on a 16×224² clip")}
    if backbone in known:
        return known[backbone]
    from reports.tables import backbone_cost

    return backbone_cost(backbone) if backbone == "orvit" else (Missing("?"), Missing("?"), "")


def rows(table, **match):
    return [r for r in table.rows if all(r[k] == v for k, v in match.items())]


def test_load_runs_keeps_finished_training_runs(store: dict) -> None:
    runs, problem = load_runs(store["uri"], EXPERIMENT)
    ids = {r.run_id for r in runs}
    assert problem == ""
    assert store["ids"]["killed"] not in ids and store["ids"]["pruned"] not in ids
    assert store["ids"]["parent"] not in ids
    assert store["ids"]["sweep_parent"] not in ids
    assert store["ids"]["trial"] in ids
    assert len(runs) == 8


def test_best_and_latest_selection(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    ids = store["ids"]
    best = build_tables(runs, "best", cost=fake_cost)
    latest = build_tables(runs, "latest", cost=fake_cost)
    row = rows(best[0], backbone="AVION ViT-L", method="+ MambaVL")[0]
    assert row["run"] == f"{ids['mamba_best']} (best of 3)"
    assert row["action_top1"] == pytest.approx(40.0)
    newest = rows(latest[0], backbone="AVION ViT-L", method="+ MambaVL")[0]
    assert newest["run"] == f"{ids['trial']} (latest of 3; sweep mamba-vitl trial 0)"
    alone = rows(best[0], backbone="AVION ViT-L", method="alone")[0]
    assert alone["run"].startswith(ids["alone"]) and alone["head"] == "mlp"
    # the run id is printed in every format
    assert ids["mamba_best"] in to_markdown(best[0])
    assert ids["mamba_best"] in to_csv(best[0])
    assert ids["mamba_best"][:8] in to_latex(best[0])


def test_published_values_and_differences(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    t1, t2, t3, t4, _ = build_tables(runs, "best", cost=fake_cost)
    published = paper.TABLE1[("avion_vit_l", "mambavl")]
    row = rows(t1, backbone="AVION ViT-L", method="+ MambaVL")[0]
    assert row["action_top1_pub"] == published["action"] == 55.0
    assert row["action_top1_diff"] == pytest.approx(40.0 - published["action"])
    assert row["source"] == "MambaVL paper, Table 1"
    assert "−15.0" in to_markdown(t1)  # 40.0 − 55.0, typeset with a minus sign
    alone = rows(t1, backbone="AVION ViT-L", method="alone")[0]
    assert alone["action_top1_pub"] == 54.4 and alone["action_top1_diff"] == pytest.approx(
        20.0 - 54.4)  # the backbone-alone run logged best_action_top1 0.2
    # the paper's other methods stand in Table 1 with their values and no run of ours
    lavila = rows(t1, backbone="LaViLa (TSF-L)")[0]
    assert lavila["verb_top1_pub"] == 72.0 and isinstance(lavila["verb_top1"], Missing)
    assert "another method" in lavila["run"].reason
    assert rows(t1, backbone="MeMViT (24x3)")[0]["action_top1_pub"] == 48.4
    ant = rows(t2, backbone="ORViT", method="+ MambaVL")[0]
    assert ant["action_recall5"] == pytest.approx(15.0)
    assert ant["action_recall5_diff"] == pytest.approx(15.0 - 23.9)
    assert ant["source"] == "authors' README (not the paper)"
    # Table 3: the paper's values beside the ORViT rows only (its ablation backbone)
    assert rows(t3, backbone="ORViT", head="MLP")[0]["action_top1_pub"] == 39.6
    vitl_mlp = rows(t3, backbone="AVION ViT-L", head="MLP")[0]
    assert "ORViT features only" in vitl_mlp["action_top1_pub"].reason
    # Table 4: ORViT's published parameters and GFLOPs, our ViT-L totals = backbone + head
    orvit = rows(t4, backbone="ORViT", model="backbone alone")[0]
    assert (orvit["params_pub"], orvit["gflops_pub"]) == (148.0, 405.0)
    assert orvit["gflops"] == pytest.approx(405.0)  # ORViT's own cost is the paper's
    assert rows(t4, backbone="ORViT", model="+ MambaVL")[0]["params_pub"] == 157.0
    vitl = rows(t4, backbone="AVION ViT-L", model="+ MambaVL")[0]
    assert vitl["params_m"] == pytest.approx(303.2 + 9.0)
    assert vitl["gflops"] == pytest.approx(4129.5 + 0.36)
    assert vitl["run"].startswith(store["ids"]["mamba_best"])


def test_missing_cells_say_why(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    t1, _, t3, t4, _ = build_tables(runs, "best", cost=fake_cost)
    orvit = rows(t1, backbone="ORViT", method="+ MambaVL")[0]
    assert isinstance(orvit["run"], Missing)
    assert "no finished run tagged fusion=mamba, backbone=orvit, task=recognition" in \
        orvit["run"].reason
    text = to_markdown(t3)
    t12 = rows(t3, head="Transformer 12×12")[0]
    assert "no finished run tagged fusion=transformer_12x12" in t12["run"].reason
    # every empty cell is a bare "—", explained once in the legend under the table
    assert "| Transformer 12×12 | — | — |" in text
    legend = [line for line in text.splitlines() if line.startswith("Empty cells (—): ")]
    assert len(legend) == 1 and text.count("ours: no run with this set-up yet") == 1
    assert "published: the paper's ablation is on ORViT features only" in legend[0]
    for table in (t1, t3, t4):  # what a reader sees never names internal files or tags
        for shown in (to_markdown(table), to_latex(table)):
            for internal in ("reports/", "fusion/", "fusion.", "extract.", ".csv", ".py",
                             "tagged", "best_"):
                assert internal not in shown, (table.name, internal)
    assert "transformer_12x12" in to_csv(t4)  # the CSV notes column carries the reason


def test_run_markers_link_to_mlflow(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    t1 = build_tables(runs, "best", cost=fake_cost)[0]
    run = next(r for r in runs if r.run_id == store["ids"]["mamba_best"])
    url = f"http://mlflow.example:5000/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    text = to_markdown(t1, "http://mlflow.example:5000/")
    notes = t1.runs()
    number = next(n.number for n in notes if n.run.run_id == run.run_id)
    assert f"| AVION ViT-L + MambaVL <sup>[{number}]({url})</sup> | clean |" in text
    assert f"<sup>{number}</sup> [run {run.run_id[:8]} (best of 3), protocol clean" in text
    assert [n.number for n in notes] == list(range(1, len(notes) + 1))
    # grouped header: per metric ours, published, difference; one decimal everywhere
    assert "| verb top-1: ours | verb top-1: pub. | verb top-1: Δ |" in text
    assert "| 60.0 | 74.3 | −14.3 |" in text  # verb = best 0.40 + 0.2


def test_captions_name_the_dataset(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    tables = build_tables(runs, "best", cost=fake_cost)
    for table in tables:
        assert "synthetic-demo" in table.caption, table.name
        assert "NOT EK100" in table.caption
        assert "frozen features" in table.caption
        assert "Protocol of our runs: clean" in table.caption  # no run logged a protocol
        assert "Dataset" in to_latex(table)
    only = build_tables(runs, "best", dataset="ek100", cost=fake_cost)
    assert "Dataset of our runs: ek100." in only[0].caption
    assert rows(only[0], backbone="AVION ViT-B", method="+ MambaVL")[0]["action_top1"] == \
        pytest.approx(45.0)
    vitl = rows(only[0], backbone="AVION ViT-L", method="+ MambaVL")[0]["run"]
    assert "dataset=ek100" in vitl.reason


def test_cli_writes_every_file(store: dict, tmp_path: Path, capsys) -> None:
    bench = tmp_path / "fusion_heads.json"
    bench.write_text('[{"head": "mamba", "seq_len": 16, "fwd_bwd_ms": 1.0, "peak_mem_mb": 10},'
                     '{"head": "mamba", "seq_len": 64, "fwd_bwd_ms": 3.5, "peak_mem_mb": 30}]')
    out = tmp_path / "out"
    main(["--tracking-uri", store["uri"], "--out", str(out), "--select", "latest",
          "--benchmark", str(bench)])
    for n in range(1, 5):
        for suffix in ("md", "tex", "csv"):
            assert (out / f"table{n}.{suffix}").stat().st_size > 0
    for plot in ("cost_accuracy", "scaling", "training_curves"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
        assert (out / "plots" / f"{plot}.pdf").exists()
    page = (out / "index.html").read_text()
    assert 'id="table4"' in page and 'src="plots/training_curves.png"' in page
    assert "table rows have a run" in capsys.readouterr().out
    # real backbone costs: ViT-L alone is 303.2 M parameters / 4129.5 GFLOPs
    assert "303.2" in (out / "table4.md").read_text()


def test_empty_store_explains(tmp_path: Path, capsys) -> None:
    db = tmp_path / "none.db"
    out = tmp_path / "out"
    main(["--tracking-uri", f"sqlite:///{db}", "--out", str(out), "--no-html"])
    assert not db.exists()  # reading never creates a store
    err = capsys.readouterr().err
    assert "no tracking store" in err and "make demo" in err
    text = (out / "table1.md").read_text()
    assert "Empty cells (—): ours: another method, published value only; ours: no run with " \
        "this set-up yet." in text and "Dataset: none" in text
    assert "no finished run tagged" in (out / "table1.csv").read_text()  # the precise cause
    assert not (out / "index.html").exists()


def test_protocols_side_by_side(tmp_path: Path) -> None:
    """Demo-like runs under the three protocols: one row each, published value and Δ beside."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    ids = {"authors": log_run(client, exp, fusion="mamba", backbone="orvit", best=0.30,
                              extra_tags={"protocol": "authors"}),
           "clean": log_run(client, exp, fusion="mamba", backbone="orvit", best=0.40, start=2)}
    ids["paper"] = log_run(client, exp, fusion="mamba", backbone="orvit", best=0.35, start=1)
    client.log_param(ids["paper"], "protocol", "paper")  # as fusion.train logs a config field
    runs, _ = load_runs(uri, EXPERIMENT)
    t1, _, t3, t4, _ = build_tables(runs, "best", cost=fake_cost)
    mamba = rows(t1, backbone="ORViT", method="+ MambaVL")
    assert [r["protocol"] for r in mamba] == ["authors", "paper", "clean"]
    for row, best in zip(mamba, (30.0, 35.0, 40.0), strict=True):
        assert row["run"].startswith(ids[row["protocol"]])
        assert row["action_top1_pub"] == 48.6
        assert row["action_top1_diff"] == pytest.approx(best - 48.6)
    assert "Protocol of our runs: authors, paper, clean" in t1.caption
    assert "frozen features" in t1.caption and "frozen features" in to_latex(t1)
    text = to_markdown(t3)
    assert re.search(r"\|  \| MambaVL <sup>\[\d\]\(http\S+\)</sup> \| paper \| 55.0 \| 69.1 \| "
                     r"−14.1 \|", text)  # verb 0.35 + 0.2; the backbone heads its block only
    assert text.count("| ORViT |") == 1
    assert [r["protocol"] for r in rows(t4, backbone="ORViT", model="+ MambaVL")] == \
        ["authors", "paper", "clean"]
    assert "frozen features" in t4.caption


def test_captions_say_when_features_came_from_a_random_init_backbone() -> None:
    from reports.tables import Pick, RunInfo, weights_line

    def pick(name: str, weights: str) -> Pick:
        run = RunInfo(name, name, 0, {"backbone_weights": weights}, {})
        return Pick(run, 1, "best")

    assert weights_line([pick("a", "checkpoint"), pick("b", "unknown")]) == ""
    line = weights_line([pick("a", "checkpoint"), pick("b", "random-init")])
    assert "Random-init backbone: 1 of our runs" in line
