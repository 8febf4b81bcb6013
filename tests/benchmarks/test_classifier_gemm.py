"""benchmarks/classifier_gemm.py on the CPU: the float32 alternatives compute the classifier."""

from benchmarks import classifier_gemm


def test_variants_compute_the_logits_and_gradients(capsys):
    rows = classifier_gemm.main(["--quick", "--steps", "1", "--rows", "6", "--classes", "97",
                                 "5", "--width", "64", "--chunks", "4"])
    assert {r["variant"] for r in rows} == {"fp32", "padded", "split_k"}
    assert len(rows) == 6
    assert all(r["max_rel_error"] < 1e-5 for r in rows), rows
    assert "not run: tf32" in capsys.readouterr().out


def test_a_wrong_classifier_shows_in_the_errors(monkeypatch):
    """The comparison can fail: a variant that drops the bias is far off."""
    monkeypatch.setitem(classifier_gemm.VARIANTS, "padded",
                        lambda x, w, b: classifier_gemm.padded(x, w, b * 0))
    rows = classifier_gemm.run(classifier_gemm.ClassifierGemmConfig(
        rows=(6,), classes=(5,), width=64, chunks=4, steps=1, quick=True))
    errors = {r["variant"]: r["max_rel_error"] for r in rows}
    assert errors["padded"] > 0.1 and errors["fp32"] < 1e-5
