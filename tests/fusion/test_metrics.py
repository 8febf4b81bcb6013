"""fusion.metrics against deliberately different computations (loops, sklearn, pandas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from fusion.metrics import (
    action_label_ranks,
    anticipation_metrics,
    candidate_label_ranks,
    label_ranks,
    mean_class_recall,
    recognition_metrics,
    top_actions,
)


def _softmax_loop(values: list[float]) -> list[float]:
    top = max(values)
    exps = [np.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _action_hits_loop(verb_row, noun_row, verb, noun, k, top_n=100) -> bool:
    """One segment, plain Python: the C1 action list, then is (verb, noun) in its top k."""
    verbs = sorted(range(len(verb_row)), key=lambda c: -verb_row[c])[:top_n]
    nouns = sorted(range(len(noun_row)), key=lambda c: -noun_row[c])[:top_n]
    pv = dict(zip(verbs, _softmax_loop([verb_row[c] for c in verbs]), strict=True))
    pn = dict(zip(nouns, _softmax_loop([noun_row[c] for c in nouns]), strict=True))
    pairs = sorted(((pv[v] * pn[n], v, n) for v in verbs for n in nouns), reverse=True)
    return (verb, noun) in [(v, n) for _, v, n in pairs[:k]]


def _signal_scores(rng, verb_labels, noun_labels, n_verbs, n_nouns):
    """Random logits with a random boost on the true class, so every metric is non-trivial."""
    n = len(verb_labels)
    verb = rng.normal(size=(n, n_verbs))
    noun = rng.normal(size=(n, n_nouns))
    verb[np.arange(n), verb_labels] += rng.uniform(0, 4, n)
    noun[np.arange(n), noun_labels] += rng.uniform(0, 4, n)
    return verb, noun


def test_small_case_equals_python_loops():
    rng = np.random.default_rng(1)
    n, n_verbs, n_nouns = 40, 6, 9
    verb_labels, noun_labels = rng.integers(0, n_verbs, n), rng.integers(0, n_nouns, n)
    verb, noun = _signal_scores(rng, verb_labels, noun_labels, n_verbs, n_nouns)
    participants = np.array(["P01", "P02", "P03", "P04"])[np.arange(n) % 4]
    tail_verbs, tail_nouns = [4, 5], [7, 8]
    got = recognition_metrics(verb, noun, verb_labels, noun_labels, participant_ids=participants,
                              unseen_participants=["P04"], tail_verbs=tail_verbs,
                              tail_nouns=tail_nouns)

    def hit(scores, label, k):
        return label in sorted(range(len(scores)), key=lambda c: -scores[c])[:k]

    rows = pd.DataFrame({"verb": verb_labels, "noun": noun_labels, "who": participants})
    for k in (1, 5):
        rows[f"verb{k}"] = [hit(verb[i], verb_labels[i], k) for i in range(n)]
        rows[f"noun{k}"] = [hit(noun[i], noun_labels[i], k) for i in range(n)]
        rows[f"action{k}"] = [_action_hits_loop(verb[i], noun[i], verb_labels[i], noun_labels[i],
                                                k) for i in range(n)]
    rows["action"] = rows["verb"] * 1000 + rows["noun"]
    for task in ("verb", "noun", "action"):
        for k in (1, 5):
            assert got[f"{task}_top{k}"] == pytest.approx(rows[f"{task}{k}"].mean(), abs=1e-12)
        per_class = rows.groupby(task)[f"{task}5"].mean()
        assert got[f"{task}_recall5"] == pytest.approx(per_class.mean(), abs=1e-12)
    tail = {"verb": rows.verb.isin(tail_verbs), "noun": rows.noun.isin(tail_nouns)}
    tail["action"] = tail["verb"] | tail["noun"]
    for task in ("verb", "noun", "action"):
        assert got[f"tail_{task}_top1"] == pytest.approx(rows[tail[task]][f"{task}1"].mean())
        assert got[f"unseen_{task}_top1"] == pytest.approx(
            rows[rows.who == "P04"][f"{task}1"].mean())


def test_action_ranks_respect_the_top_n_cut():
    """Only the top_n verbs and nouns form actions; nouns are renormalised over those kept."""
    rng = np.random.default_rng(2)
    verb, noun = rng.normal(size=(30, 5)), rng.normal(size=(30, 12))
    verb_labels, noun_labels = rng.integers(0, 5, 30), rng.integers(0, 12, 30)
    ranks = action_label_ranks(verb, noun, verb_labels, noun_labels, top_n=4)
    for i in range(30):
        for k in (1, 3, 5):
            assert (ranks[i] < k) == _action_hits_loop(verb[i], noun[i], verb_labels[i],
                                                       noun_labels[i], k, top_n=4)


def test_top_actions_agree_with_action_ranks():
    rng = np.random.default_rng(3)
    verb, noun = rng.normal(size=(50, 97)), rng.normal(size=(50, 300))
    verb_labels, noun_labels = rng.integers(0, 97, 50), rng.integers(0, 300, 50)
    verb[np.arange(50), verb_labels] += 3
    noun[np.arange(50), noun_labels] += 3
    verbs, nouns, scores = top_actions(verb, noun)
    assert verbs.shape == nouns.shape == scores.shape == (50, 100)
    assert (np.diff(scores, axis=1) <= 0).all()
    direct = action_label_ranks(verb, noun, verb_labels, noun_labels)
    listed = candidate_label_ranks(verbs, nouns, scores, verb_labels, noun_labels)
    assert (np.minimum(direct, 100) == np.minimum(listed, 100)).all()
    assert (direct < 100).any()


def test_ties_rank_the_higher_class_first():
    """argsort(...)[::-1] semantics: among equal scores the later class comes first."""
    scores = np.zeros((4, 5))
    assert label_ranks(scores, [0, 1, 3, 4]).tolist() == [4, 3, 1, 0]
    cand = np.array([[2, 3]])
    assert candidate_label_ranks(cand, cand, np.ones((1, 2)), [2], [2]).tolist() == [1]


def test_class_mean_recall_counts_each_present_class_once():
    ranks = np.array([0, 9, 9, 9, 0])
    labels = np.array([1, 1, 1, 1, 2])  # class 1: 1/4, class 2: 1/1
    assert mean_class_recall(ranks, labels, 5) == pytest.approx((0.25 + 1.0) / 2)


def test_torch_tensors_and_bad_inputs():
    rng = np.random.default_rng(4)
    verb, noun = rng.normal(size=(8, 97)), rng.normal(size=(8, 300))
    labels_v, labels_n = rng.integers(0, 97, 8), rng.integers(0, 300, 8)
    ref = anticipation_metrics(verb, noun, labels_v, labels_n)
    got = anticipation_metrics(torch.tensor(verb), torch.tensor(noun), torch.tensor(labels_v),
                               torch.tensor(labels_n))
    assert got == ref
    anticipation_metrics(torch.tensor(verb, dtype=torch.bfloat16), torch.tensor(noun),
                         labels_v, labels_n)
    verb[3, 7] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        recognition_metrics(verb, noun, labels_v, labels_n)
    with pytest.raises(ValueError, match="0..299"):
        recognition_metrics(noun, noun, labels_n, labels_n + 300)


def test_real_validation_labels_independent(ek100_root: Path):
    """All 9,668 validation rows, random scores: sklearn/pandas/partition vs fusion.metrics."""
    frame = pd.read_csv(ek100_root / "EPIC_100_validation.csv")
    verb_labels, noun_labels = frame.verb_class.to_numpy(), frame.noun_class.to_numpy()
    rng = np.random.default_rng(0)
    verb, noun = _signal_scores(rng, verb_labels, noun_labels, 97, 300)
    tail_verbs = pd.read_csv(ek100_root / "EPIC_100_tail_verbs.csv").verb.to_numpy()
    tail_nouns = pd.read_csv(ek100_root / "EPIC_100_tail_nouns.csv").noun.to_numpy()
    unseen = pd.read_csv(ek100_root / "EPIC_100_unseen_participant_ids_validation.csv")
    kwargs = dict(participant_ids=frame.participant_id, tail_verbs=tail_verbs,
                  tail_nouns=tail_nouns, unseen_participants=unseen.participant_id)
    rec = recognition_metrics(verb, noun, verb_labels, noun_labels, **kwargs)
    ant = anticipation_metrics(verb, noun, verb_labels, noun_labels, **kwargs)

    # independent: sklearn for verbs/nouns; actions by the k-th largest product (partition)
    hits = pd.DataFrame({"verb": verb_labels, "noun": noun_labels,
                         "action": verb_labels * 1000 + noun_labels})
    for k in (1, 5):
        assert rec[f"verb_top{k}"] == pytest.approx(
            top_k_accuracy_score(verb_labels, verb, k=k, labels=range(97)), abs=1e-12)
        assert rec[f"noun_top{k}"] == pytest.approx(
            top_k_accuracy_score(noun_labels, noun, k=k, labels=range(300)), abs=1e-12)
    for task, scores, labels in (("verb", verb, verb_labels), ("noun", noun, noun_labels)):
        order = np.argsort(-scores, axis=1)[:, :5]
        hits[f"{task}5"] = (order == labels[:, None]).any(axis=1)
        hits[f"{task}1"] = order[:, 0] == labels
    keep = np.argsort(-noun, axis=1)[:, :100]
    kept = np.take_along_axis(noun, keep, axis=1)
    pn = np.exp(kept - kept.max(1, keepdims=True))
    pn /= pn.sum(1, keepdims=True)
    pv = np.exp(verb - verb.max(1, keepdims=True))
    pv /= pv.sum(1, keepdims=True)
    where = keep == noun_labels[:, None]
    own = np.where(where.any(1), pv[np.arange(len(frame)), verb_labels]
                   * pn[np.arange(len(frame)), where.argmax(1)], -1.0)
    fifth_best = np.empty((len(frame), 5))
    for start in range(0, len(frame), 1000):
        part = slice(start, start + 1000)
        products = (pv[part, :, None] * pn[part, None, :]).reshape(len(pv[part]), -1)
        best = -np.partition(-products, 4, axis=1)[:, :5]
        fifth_best[part] = np.sort(best, axis=1)[:, ::-1]
    for k in (1, 5):
        hits[f"action{k}"] = own >= fifth_best[:, k - 1]
    tail = {"verb": np.isin(verb_labels, tail_verbs), "noun": np.isin(noun_labels, tail_nouns)}
    tail["action"] = tail["verb"] | tail["noun"]
    unseen_rows = frame.participant_id.isin(unseen.participant_id).to_numpy()
    for task in ("verb", "noun", "action"):
        for k in (1, 5):
            assert rec[f"{task}_top{k}"] == pytest.approx(hits[f"{task}{k}"].mean(), abs=1e-12)
        recall = hits.groupby(task)[f"{task}5"].mean().mean()
        assert rec[f"{task}_recall5"] == ant[f"{task}_recall5"] == pytest.approx(recall, abs=1e-12)
        assert rec[f"tail_{task}_top1"] == pytest.approx(hits[tail[task]][f"{task}1"].mean())
        assert rec[f"unseen_{task}_top1"] == pytest.approx(hits[unseen_rows][f"{task}1"].mean())
        assert ant[f"tail_{task}_recall5"] == pytest.approx(
            hits[tail[task]].groupby(task)[f"{task}5"].mean().mean(), abs=1e-12)
        assert ant[f"unseen_{task}_recall5"] == pytest.approx(
            hits[unseen_rows].groupby(task)[f"{task}5"].mean().mean(), abs=1e-12)
    assert 0.05 < rec["action_top1"] < rec["action_top5"] < 0.5


def _official_ranks(verb, noun, verb_labels, noun_labels, top_n=100):
    """C3's procedure on every row, no shortcut: sorted top-n lists, softmax, products,
    the top-n action list, re-ranked by argsort(...)[::-1]; and argsort ranks for verbs and
    nouns."""
    from fusion.metrics import (
        _action_probs,
        _descending,
        _official_action_list,
        _position,
        action_id,
    )

    ids, scores = _official_action_list(*_action_probs(verb, noun, top_n), top_n)
    reranked = np.take_along_axis(ids, _descending(scores), axis=1)
    return (_position(_descending(verb), verb_labels), _position(_descending(noun), noun_labels),
            _position(reranked, action_id(verb_labels, noun_labels)))


@pytest.mark.parametrize("levels", [None, 3, 6, 40])
def test_shortcuts_equal_the_official_sort_with_and_without_ties(levels):
    """Counting higher scores (and partial sorts for the kept top-n) gives exactly the
    official ranks; scores on a few levels tie everywhere: label ties, ties at the top-n
    cut and tied products all fall back to the official sort."""
    rng = np.random.default_rng(7 if levels is None else levels)
    n = 700  # several chunks
    verb_labels, noun_labels = rng.integers(0, 97, n), rng.integers(0, 300, n)
    verb, noun = _signal_scores(rng, verb_labels, noun_labels, 97, 300)
    if levels is not None:
        verb, noun = np.round(verb * levels / 8), np.round(noun * levels / 8)
    official = _official_ranks(verb, noun, verb_labels, noun_labels)
    assert (label_ranks(verb, verb_labels) == official[0]).all()
    assert (label_ranks(noun, noun_labels) == official[1]).all()
    assert (action_label_ranks(verb, noun, verb_labels, noun_labels) == official[2]).all()
    # and with a top-n cut inside the verbs too
    cut = _official_ranks(verb, noun, verb_labels, noun_labels, top_n=20)[2]
    assert (action_label_ranks(verb, noun, verb_labels, noun_labels, top_n=20) == cut).all()


def _routed_rows(monkeypatch) -> list:
    """Records the rows handed to the official (numpy) procedure: each call's row indices."""
    from fusion import metrics

    routed: list = []
    original = metrics._host_rows

    def recording(scores, rows):
        routed.append(np.array(rows))
        return original(scores, rows)

    monkeypatch.setattr(metrics, "_host_rows", recording)
    return routed


def _tensor_case(kind: str, dtype: torch.dtype, n: int = 600):
    """EK100-shaped scores as tensors of `dtype` and labels: random logits or scores on a
    few levels (ties everywhere)."""
    rng = np.random.default_rng(11)
    verb_labels, noun_labels = rng.integers(0, 97, n), rng.integers(0, 300, n)
    verb, noun = _signal_scores(rng, verb_labels, noun_labels, 97, 300)
    if kind == "tied":
        verb, noun = np.round(verb * 3 / 8), np.round(noun * 3 / 8)
    tensors = (torch.tensor(x, dtype=dtype) for x in (verb, noun))
    return *tensors, verb_labels, noun_labels


def _check_tensors_against_official(verb, noun, verb_labels, noun_labels):
    """Ranks of tensors (any device) == ranks of the same values as numpy == the official
    sort-based procedure on every row (float64, as the official code sees them)."""
    host_verb, host_noun = (x.cpu().float().numpy() if x.dtype == torch.bfloat16
                            else x.cpu().numpy() for x in (verb, noun))
    for top_n in (100, 20):
        official = _official_ranks(host_verb.astype(np.float64), host_noun.astype(np.float64),
                                   verb_labels, noun_labels, top_n=top_n)
        if top_n == 100:
            for scores, host, labels, want in ((verb, host_verb, verb_labels, official[0]),
                                               (noun, host_noun, noun_labels, official[1])):
                assert (label_ranks(scores, labels) == want).all()
                assert (label_ranks(host, labels) == want).all()
        got = action_label_ranks(verb, noun, verb_labels, noun_labels, top_n=top_n)
        assert got.dtype == np.int64 and (got == official[2]).all()
        assert (action_label_ranks(host_verb, host_noun, verb_labels, noun_labels,
                                   top_n=top_n) == official[2]).all()
    for metrics in (recognition_metrics, anticipation_metrics):
        assert metrics(verb, noun, verb_labels, noun_labels) == metrics(
            host_verb, host_noun, verb_labels, noun_labels)


def _near_tie_case(n: int = 400):
    """Rows whose label product (verb a, noun b) has a twin (c, d) equal in exact arithmetic:
    c's logit is a's + delta and d's is b's - delta, so p(a) p(b) and p(c) p(d) differ only
    by rounding, often by one ulp (float64). Returns scores, labels and the one-ulp rows."""
    from fusion.metrics import _action_probs

    rng = np.random.default_rng(5)
    verb, noun = rng.normal(size=(n, 97)), rng.normal(size=(n, 300))
    rows = np.arange(n)
    a, b = rng.integers(0, 48, n), rng.integers(0, 150, n)
    c, d = a + 48, b + 150
    verb[rows, a] += 3
    noun[rows, b] += 3
    delta = rng.uniform(0.01, 0.5, n)
    verb[rows, c] = verb[rows, a] + delta
    noun[rows, d] = noun[rows, b] - delta
    verbs, nouns, pv, pn = _action_probs(verb, noun, 100)  # the official probabilities

    def product(v, u):
        return pv[rows, (verbs == v[:, None]).argmax(1)] * pn[rows, (nouns == u[:, None]).argmax(1)]

    own, twin = product(a, b), product(c, d)
    one_ulp = (twin == np.nextafter(own, np.inf)) | (twin == np.nextafter(own, -np.inf))
    return verb, noun, a, b, np.nonzero(one_ulp)[0]


def _check_near_ties_go_official(monkeypatch, device: str):
    verb, noun, verb_labels, noun_labels, one_ulp = _near_tie_case()
    assert len(one_ulp) >= 20  # the case does what it says
    official = _official_ranks(verb, noun, verb_labels, noun_labels)[2]
    routed = _routed_rows(monkeypatch)
    for dtype in (torch.float64, torch.float32):
        tv, tn = (torch.tensor(x, dtype=dtype, device=device) for x in (verb, noun))
        routed.clear()
        got = action_label_ranks(tv, tn, verb_labels, noun_labels)
        host = (tv.cpu().double().numpy(), tn.cpu().double().numpy())
        assert (got == _official_ranks(*host, verb_labels, noun_labels)[2]).all()
        if dtype == torch.float64:
            assert (got == official).all()
            # torch's exp/sums may round these products apart differently from numpy's: the
            # near-tie guard must hand every one-ulp row to the official sort
            assert set(one_ulp) <= set(np.concatenate(routed).tolist())


@pytest.mark.parametrize("kind", ["random", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_fast_paths_equal_numpy_and_the_official_sort(monkeypatch, kind, dtype):
    """The fast paths run in torch on the scores' device: CPU tensors of each dtype rank
    exactly as the same values in numpy and as the official procedure, ties included."""
    verb, noun, verb_labels, noun_labels = _tensor_case(kind, dtype)
    routed = _routed_rows(monkeypatch)
    _check_tensors_against_official(verb, noun, verb_labels, noun_labels)
    if kind == "random" and dtype != torch.bfloat16:
        assert not routed  # continuous scores: every row on the fast path (no fallback)
    else:
        assert routed  # ties: the official sort ran


def test_near_tied_products_go_to_the_official_sort(monkeypatch):
    _check_near_ties_go_official(monkeypatch, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_fast_paths_equal_the_official_sort(monkeypatch, kind, dtype):
    """As on the CPU, with the scores on the GPU (as validation passes them)."""
    verb, noun, verb_labels, noun_labels = _tensor_case(kind, dtype)
    verb, noun = verb.cuda(), noun.cuda()
    routed = _routed_rows(monkeypatch)
    _check_tensors_against_official(verb, noun, verb_labels, noun_labels)
    if kind == "random" and dtype != torch.bfloat16:
        assert not routed
    _check_near_ties_go_official(monkeypatch, "cuda")
