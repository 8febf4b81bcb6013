"""EK100 metrics, defined as the official `epic-kitchens` evaluation code defines them.

Everything here reduces to one number per segment: the 0-based *rank* of its true class
among the predicted scores. Top-k accuracy is `mean(rank < k)`; the anticipation metric,
class-mean top-k recall, is the mean over the classes present in the evaluated labels of
each class's `mean(rank < k)` (`mean_topk_recall` in C3-Action-Anticipation's
`evaluate_anticipation_json_ek100.py`).

Action scores (C1 `utils/scoring.py::compute_action_scores`, identical in C3):
  1. take the `top_n = 100` highest verb scores and the 100 highest noun scores of the
     segment (EK100: all 97 verbs, the best 100 of 300 nouns);
  2. softmax each of those two score vectors on its own, so the scores are treated as
     logits and the noun probabilities are renormalised over the 100 kept nouns only;
  3. the score of action (verb, noun) is `p(verb) * p(noun)` for the 97 x 100 pairs, and
     the 100 best pairs form the ranked action list; any other action is never ranked (a
     miss at every k <= 100). The action id is `verb * 1000 + noun`.
C1's `evaluate.py` calls `scipy.special.softmax` without `axis`, so it normalises over the
whole batch instead of per segment; that rescales each segment's products by one constant
and so leaves the within-segment order, which is all a rank depends on, unchanged (up to
rounding). We use the per-segment softmax, as C3 does, in float64.

Ties: both official scripts rank with `np.argsort(scores)[:, ::-1]` (numpy's default,
unstable sort), so under exact ties their order is whatever that call returns. We rank with
the same call on float64 scores (what C3 sees after reading JSON), so verb, noun and
explicit action-list ranks equal C3's on the same numpy build even with ties. For formed
actions we count products above the label's product (exact when nothing ties with it) and
run C3's own sort-based procedure only on the rows where a tie could change the rank.
Those counts (the fast paths) run in torch on the scores' own device (validation passes GPU
tensors; numpy arrays are wrapped as CPU tensors without a copy) and compare the raw scores
exactly; the official numpy procedure gets host copies of just the rows that need it. The
action probabilities are float64 softmaxes in both, but torch's `exp` and sums may round
differently from numpy's by a few ulps, so a row where any other product lies within a
relative `_NEAR_TIE` of the label's product (not just equal to it) is also ranked by the
official procedure: elsewhere the count cannot differ from numpy's order.
C1 sorts the dtype it is given (float32 `.pkl`) and normalises over the batch, so under
exact ties of float32 products its order can differ from C3's; continuous scores never tie.

Official breakdowns: C1 reports top-1 accuracy on tail classes and on unseen participants;
C3 reports class-mean top-5 recall on both. A segment is a tail-verb segment when its verb
is in `EPIC_100_tail_verbs.csv`, tail-noun likewise, and a tail-action segment when either
its verb or its noun is a tail class. Breakdown keys are left out when their subset is empty
or the class/participant lists are not given (C1 skips empty unseen subsets the same way).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

TOP_N = 100
ACTION_VERB_MULTIPLIER = 1000
TASKS = ("verb", "noun", "action")
_CHUNK = 128  # rows per official (numpy, sort-based) action pass: (128, 9,700) products
_NOT_RANKED = np.iinfo(np.int64).max
# bytes of the (rows, verbs, nouns) float64 products per fast-path chunk (EK100: 97 x 101
# columns, 78 kB a row): on a GPU ~3,400 rows, three chunks for the validation split; on the
# CPU ~100 rows, which bounds memory and stays near the caches (4-16 MB measured fastest)
_PRODUCT_BYTES = {"cuda": 256 * 2**20, "cpu": 8 * 2**20}
# Relative distance from the label's product within which another product sends the row to
# the official procedure. numpy and torch compute the same float64 formula exp(x - max) / sum
# from identical inputs (x - max is one correctly rounded subtraction in both); they differ
# only by exp's error (<= ~3 ulp in numpy's SIMD exp, <= 1 ulp in Sleef/CUDA; on the CPU
# even equal inputs may differ by an ulp between a vector loop's body and its tail: <= 8 u
# apart, u = 2**-53 ~ 1.1e-16), the order of the <= 100-term sum of positive terms (torch
# sums the kept values unsorted; <= 99 u each way) and the division: a probability differs
# by <= ~216 u, a product by <= ~434 u ~ 5e-14 relative, so two products can only swap order
# between numpy and torch when within ~1e-13 of each other. 1e-12 leaves a factor of 10 on
# that worst case (every rounding of one sign; measured differences are a few ulps), and a
# product that close to the label's without an exact tie in the scores is rare (9,700
# products against a 2e-12 window a row), so the fallback costs nothing.
_NEAR_TIE = 1e-12
# Label products below this go to the official procedure too: the bound above assumes the
# exps and probabilities are normal floats (no underflow); 1e-200 keeps every factor of a
# product near the label's far above the subnormal range.
_TINY = 1e-200


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view of `array`; torch tensors (any device, bf16 included) are accepted."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if array.is_floating_point() and array.dtype not in (_torch_dtype("float32"),
                                                              _torch_dtype("float64")):
            array = array.float()
        array = array.numpy()
    return np.asarray(array)


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _scores(array: Any, name: str) -> np.ndarray:
    scores = to_numpy(array).astype(np.float64, copy=False)
    if scores.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (segments, classes) array, got {scores.shape}")
    if not np.isfinite(scores).all():
        row = int(np.nonzero(~np.isfinite(scores).all(axis=1))[0][0])
        raise ValueError(f"{name}: row {row} holds NaN or infinite scores")
    return scores


def _score_tensor(array: Any, name: str) -> Any:
    """The scores as a 2-D torch tensor on their own device, checked like `_scores`.

    numpy arrays become CPU tensors without a copy; float32/float64 stay as they are, other
    floating dtypes (bf16, fp16) become float32 and integers float64, all exact conversions,
    so comparisons of these values are comparisons of `_scores`'s float64 values."""
    import torch

    scores = array.detach() if isinstance(array, torch.Tensor) else _tensor(array, "cpu")
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float() if scores.is_floating_point() else scores.double()
    if scores.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (segments, classes) array, got "
                         f"{tuple(scores.shape)}")
    finite = torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{name}: row {row} holds NaN or infinite scores")
    return scores


def _tensor(array: Any, device: Any) -> Any:
    """A numpy array as a torch tensor on `device`: on the CPU the same memory, no copy."""
    import torch

    values = np.asarray(array)
    if any(stride < 0 for stride in values.strides) or not values.flags.writeable:
        values = np.array(values)  # from_numpy takes neither reversed nor read-only views
    return torch.from_numpy(values).to(device)


def _host_rows(scores: Any, rows: np.ndarray) -> np.ndarray:
    """float64 numpy copies of `rows` of a scores tensor: what the official procedure sorts."""
    return scores.index_select(0, _tensor(rows, scores.device)).double().cpu().numpy()


def _labels(array: Any, n: int, name: str, classes: int | None = None) -> np.ndarray:
    labels = to_numpy(array).astype(np.int64, copy=False).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{name}: {len(labels)} labels for {n} rows of scores")
    if classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name}: labels must lie in 0..{classes - 1}")
    return labels


def action_id(verb: Any, noun: Any) -> Any:
    """The official action id of a (verb, noun) pair: `verb * 1000 + noun`."""
    return np.asarray(verb, dtype=np.int64) * ACTION_VERB_MULTIPLIER + np.asarray(noun)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax `exp(x - max) / sum`, the same operations as C3's `softmax`."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Class indices best first, in the official order: `np.argsort(scores)[:, ::-1]`."""
    return np.argsort(scores, axis=1)[:, ::-1]


def _position(order: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where `wanted[i]` sits in `order[i]`; `_NOT_RANKED` where it is absent."""
    hit = order == wanted[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), _NOT_RANKED)


def label_ranks(scores: Any, labels: Any) -> np.ndarray:
    """0-based rank of each row's label in the official `argsort(...)[::-1]` order.

    That order puts every higher score first, so the rank is the count of higher scores
    where no other class ties the label's score; tied rows are sorted as the official code
    sorts (a full sort per row is most of the metrics' time otherwise). The count runs in
    torch on the scores' device (numpy or torch scores, any device)."""
    scores = _score_tensor(scores, "scores")
    return _label_ranks(scores, _labels(labels, len(scores), "labels", scores.shape[1]))


def _label_ranks(scores: Any, labels: np.ndarray) -> np.ndarray:
    """`label_ranks` of checked scores (a tensor) and labels (numpy int64)."""
    import torch

    own = scores.gather(1, _tensor(labels, scores.device)[:, None])
    tied = (scores == own).sum(dim=1, dtype=torch.int32) > 1
    above = (scores > own).sum(dim=1, dtype=torch.int32)
    ranks = torch.where(tied, -1, above).cpu().numpy().astype(np.int64)  # one sync
    rows = np.nonzero(ranks < 0)[0]
    if len(rows):
        ranks[rows] = _position(_descending(_host_rows(scores, rows)), labels[rows])
    return ranks


def _action_probs(verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int):
    verbs = _descending(verb_scores)[:, :top_n]
    nouns = _descending(noun_scores)[:, :top_n]
    pv = softmax(np.take_along_axis(verb_scores, verbs, axis=1))
    pn = softmax(np.take_along_axis(noun_scores, nouns, axis=1))
    return verbs, nouns, pv, pn


def _official_action_list(verbs, nouns, pv, pn, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The C3 procedure on rows of kept classes: action ids and scores, official order."""
    products = (pv[:, :, None] * pn[:, None, :]).reshape(len(pv), -1)
    best = _descending(products)[:, :n]
    ids = action_id(np.take_along_axis(verbs, best // pn.shape[1], axis=1),
                    np.take_along_axis(nouns, best % pn.shape[1], axis=1))
    return ids, np.take_along_axis(products, best, axis=1)


def action_label_ranks(
    verb_scores: Any, noun_scores: Any, verb_labels: Any, noun_labels: Any, top_n: int = TOP_N
) -> np.ndarray:
    """Rank of each row's true action among the verb x noun products (module docstring).

    Fast path, in torch on the scores' device: the number of products above the label's.
    Where that number does not fix the official rank (another product ties or nearly ties
    the label's, see `_NEAR_TIE`, or its verb/noun ties the last kept class), the row is
    ranked by the official procedure itself, in numpy: top-`top_n` action list by
    `argsort(...)[::-1]`, then that list re-ranked the same way. Rows whose action is not in
    the list get `_NOT_RANKED` (a miss at every k <= top_n).
    """
    verb_scores = _score_tensor(verb_scores, "verb_scores")
    noun_scores = _score_tensor(noun_scores, "noun_scores")
    n = len(verb_scores)
    return _action_label_ranks(verb_scores, noun_scores,
                               _labels(verb_labels, n, "verb_labels", verb_scores.shape[1]),
                               _labels(noun_labels, n, "noun_labels", noun_scores.shape[1]),
                               top_n)


def _kept_probs(scores: Any, labels: Any, width: int) -> tuple[Any, Any, Any, Any]:
    """One task's part of the action fast path, on the scores' device.

    Returns, per row: the float64 softmax over the values of the official top-`width` list
    (columns in any order: a count of products does not depend on it; a column of zeros may
    stand for a class left out), the column holding the label's value, whether the label is
    kept, and whether it ties both the last kept and the first left-out value (then which
    tied class the official sort keeps decides, so the official procedure must rank it)."""
    import torch

    if scores.shape[1] <= width:  # every class is kept: the scores are the list's values
        kept = torch.ones_like(labels, dtype=torch.bool)
        return _softmax_tensor(scores.double()), labels, kept, ~kept
    label_score = scores.gather(1, labels[:, None])
    top = torch.topk(scores, width + 1, dim=1, sorted=False).values  # the width + 1 largest
    # ascending: the first value left out (one instance of the smallest) and the last kept
    cut, where = torch.topk(top, 2, dim=1, largest=False)
    shifted = (top.double() - top.amax(dim=1, keepdim=True)).exp()
    probs = shifted.scatter_(1, where[:, :1], 0.0)  # the left-out instance: exp -> 0
    probs = probs / probs.sum(dim=1, keepdim=True)
    # a column with the label's value: not the zeroed one unless the label ties the cut,
    # and then `edge` holds (a row that is not kept gets column 0: unused)
    place = (top == label_score).to(torch.uint8).argmax(dim=1)
    inside = label_score[:, 0] >= cut[:, 1]
    edge = (cut == label_score).all(dim=1)
    return probs, place, inside, edge


def _softmax_tensor(scores: Any) -> Any:
    """`softmax` in torch, the same operations: `exp(x - max) / sum` per row."""
    shifted = (scores - scores.amax(dim=1, keepdim=True)).exp()
    return shifted / shifted.sum(dim=1, keepdim=True)


_SLOW, _MISS = -2, -1  # fast-path codes: rank by the official procedure / not in the top_n


def _action_label_ranks(verb_scores: Any, noun_scores: Any, verb_labels: np.ndarray,
                        noun_labels: np.ndarray, top_n: int) -> np.ndarray:
    """`action_label_ranks` of checked score tensors and labels (numpy int64)."""
    import torch

    device = verb_scores.device
    noun_scores = noun_scores.to(device)
    n = len(verb_scores)
    # each task's probabilities for all rows at once (small); the products in chunks
    (pv, verb_place, verb_in, verb_edge), (pn, noun_place, noun_in, noun_edge) = (
        _kept_probs(scores, _tensor(labels, device), min(top_n, scores.shape[1]))
        for scores, labels in ((verb_scores, verb_labels), (noun_scores, noun_labels)))
    inside, edge = verb_in & noun_in, verb_edge | noun_edge
    budget = _PRODUCT_BYTES["cuda" if device.type == "cuda" else "cpu"]
    chunk = max(1, budget // (pv.element_size() * pv.shape[1] * pn.shape[1]))
    found = torch.empty(n, dtype=torch.int64, device=device)  # rank, _MISS or _SLOW
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        products = pv[part, :, None] * pn[part, None, :]
        own = products[torch.arange(len(products), device=device), verb_place[part],
                       noun_place[part]]
        products = products.flatten(1)
        # products above own * (1 + _NEAR_TIE) and above own * (1 - _NEAR_TIE): they differ
        # by exactly 1 (own itself) when no other product is near own, and then the first
        # is the count of products above own (own > 0 here: smaller ones go slow anyway)
        above, above_low = ((products > own[:, None] * (1 + sign * _NEAR_TIE)).sum(
            dim=1, dtype=torch.int32) for sign in (1, -1))
        near = (above_low - above != 1) | (own < _TINY)
        ranked = torch.where(inside[part] & (above < top_n), above.long(), _MISS)
        found[part] = torch.where(edge[part] | (inside[part] & near), _SLOW, ranked)
    found = found.cpu().numpy()
    ranks = np.where(found >= 0, found, _NOT_RANKED)
    slow_rows = np.nonzero(found == _SLOW)[0]
    for start in range(0, len(slow_rows), _CHUNK):
        rows = slow_rows[start : start + _CHUNK]
        ids, scores_ = _official_action_list(*_action_probs(
            _host_rows(verb_scores, rows), _host_rows(noun_scores, rows), top_n), top_n)
        reranked = np.take_along_axis(ids, _descending(scores_), axis=1)
        ranks[rows] = _position(reranked, action_id(verb_labels[rows], noun_labels[rows]))
    return ranks


def top_actions(
    verb_scores: Any, noun_scores: Any, n: int = TOP_N, top_n: int = TOP_N
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `n` best actions per row as (verbs, nouns, scores), each (N, n), best first.

    These are the `"verb,noun": score` entries of a C3 anticipation submission, in the
    order C3 itself lists them when it forms actions from verb and noun scores.
    """
    verb_scores = _scores(verb_scores, "verb_scores")
    noun_scores = _scores(noun_scores, "noun_scores")
    total = len(verb_scores)
    kept = min(top_n, verb_scores.shape[1]) * min(top_n, noun_scores.shape[1])
    if n > kept:
        raise ValueError(f"asked for {n} actions but only {kept} verb x noun pairs are kept")
    ids = np.empty((total, n), dtype=np.int64)
    scores = np.empty((total, n), dtype=np.float64)
    for start in range(0, total, _CHUNK):
        part = slice(start, min(start + _CHUNK, total))
        ids[part], scores[part] = _official_action_list(
            *_action_probs(verb_scores[part], noun_scores[part], top_n), n)
    return ids // ACTION_VERB_MULTIPLIER, ids % ACTION_VERB_MULTIPLIER, scores


def candidate_label_ranks(
    action_verbs: Any, action_nouns: Any, action_scores: Any, verb_labels: Any, noun_labels: Any
) -> np.ndarray:
    """Rank of the true action within explicit per-row candidate lists (e.g. a C3 JSON).

    Ranked as the official code ranks a score dict: `argsort(scores)[::-1]` over the list
    in its given order; a label missing from its row's list is never a hit.
    """
    scores = _scores(action_scores, "action_scores")
    n = len(scores)
    cand = action_id(to_numpy(action_verbs), to_numpy(action_nouns))
    if cand.shape != scores.shape:
        raise ValueError(f"action ids {cand.shape} and action scores {scores.shape} differ")
    verb_labels = _labels(verb_labels, n, "verb_labels")
    truth = action_id(verb_labels, _labels(noun_labels, n, "noun_labels"))
    return _position(np.take_along_axis(cand, _descending(scores), axis=1), truth)


def topk_accuracy(ranks: np.ndarray, k: int) -> float:
    """Fraction of rows whose label ranks in the top `k`."""
    return float(np.mean(ranks < k))


def mean_class_recall(ranks: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean over the classes present in `labels` of each class's top-`k` recall."""
    classes, inverse = np.unique(labels, return_inverse=True)
    hits = np.bincount(inverse, weights=(ranks < k).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / np.bincount(inverse, minlength=len(classes))))


def _all_ranks(
    verb_scores: Any, noun_scores: Any, verb_labels: Any, noun_labels: Any, actions: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    verb_scores = _score_tensor(verb_scores, "verb_scores")  # on their device: fast paths
    noun_scores = _score_tensor(noun_scores, "noun_scores")
    n = len(verb_scores)
    if len(noun_scores) != n:
        raise ValueError(f"{n} rows of verb scores but {len(noun_scores)} of noun scores")
    if n == 0:
        raise ValueError("need at least one segment to evaluate")
    verb_labels = _labels(verb_labels, n, "verb_labels", verb_scores.shape[1])
    noun_labels = _labels(noun_labels, n, "noun_labels", noun_scores.shape[1])
    if actions is None:
        action_ranks = _action_label_ranks(verb_scores, noun_scores, verb_labels, noun_labels,
                                           TOP_N)
    else:
        action_ranks = candidate_label_ranks(*actions, verb_labels, noun_labels)
    ranks = {
        "verb": _label_ranks(verb_scores, verb_labels),
        "noun": _label_ranks(noun_scores, noun_labels),
        "action": action_ranks,
    }
    labels = {"verb": verb_labels, "noun": noun_labels,
              "action": action_id(verb_labels, noun_labels)}
    return ranks, labels


def _subsets(
    labels: dict[str, np.ndarray],
    participant_ids: Any,
    unseen_participants: Iterable[str] | None,
    tail_verbs: Iterable[int] | None,
    tail_nouns: Iterable[int] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Row masks per breakdown and task: `{"tail": {...}, "unseen": {...}}`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if tail_verbs is not None and tail_nouns is not None:
        verb = np.isin(labels["verb"], np.asarray(list(tail_verbs), dtype=np.int64))
        noun = np.isin(labels["noun"], np.asarray(list(tail_nouns), dtype=np.int64))
        out["tail"] = {"verb": verb, "noun": noun, "action": verb | noun}
    if participant_ids is not None and unseen_participants is not None:
        ids = np.asarray(to_numpy(participant_ids)).astype(str)
        if len(ids) != len(labels["verb"]):
            raise ValueError(f"{len(ids)} participant ids for {len(labels['verb'])} rows")
        unseen = np.isin(ids, np.asarray(list(unseen_participants), dtype=str))
        out["unseen"] = {task: unseen for task in TASKS}
    return out


def _headline(ranks: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for k in (1, 5):
        for task in TASKS:
            metrics[f"{task}_top{k}"] = topk_accuracy(ranks[task], k)
    for task in TASKS:
        metrics[f"{task}_recall5"] = mean_class_recall(ranks[task], labels[task], 5)
    return metrics


def recognition_metrics(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    participant_ids: Any = None,
    unseen_participants: Iterable[str] | None = None,
    tail_verbs: Iterable[int] | None = None,
    tail_nouns: Iterable[int] | None = None,
    actions: tuple[Any, Any, Any] | None = None,
) -> dict[str, float]:
    """EK100 recognition metrics as fractions in [0, 1] (C1-Action-Recognition's set).

    Keys: `{verb,noun,action}_{top1,top5,recall5}`; with tail classes
    `tail_{verb,noun,action}_top1`; with participants `unseen_{verb,noun,action}_top1`.
    Scores are logits (N, V) and (N, N_nouns), numpy or torch. `actions`, an optional
    `(verbs, nouns, scores)` triple of (N, K) candidate lists, replaces the verb x noun
    action scores (used for files that carry their own action scores).
    """
    ranks, labels = _all_ranks(verb_scores, noun_scores, verb_labels, noun_labels, actions)
    metrics = _headline(ranks, labels)
    subsets = _subsets(labels, participant_ids, unseen_participants, tail_verbs, tail_nouns)
    for name in ("tail", "unseen"):
        for task, mask in subsets.get(name, {}).items():
            if mask.any():
                metrics[f"{name}_{task}_top1"] = topk_accuracy(ranks[task][mask], 1)
    return metrics


def anticipation_metrics(
    verb_scores: Any,
    noun_scores: Any,
    verb_labels: Any,
    noun_labels: Any,
    *,
    participant_ids: Any = None,
    unseen_participants: Iterable[str] | None = None,
    tail_verbs: Iterable[int] | None = None,
    tail_nouns: Iterable[int] | None = None,
    actions: tuple[Any, Any, Any] | None = None,
) -> dict[str, float]:
    """EK100 anticipation metrics as fractions in [0, 1] (C3-Action-Anticipation's set).

    Headline keys as `recognition_metrics` (the official number is `*_recall5`, class-mean
    top-5 recall over the classes present); breakdowns `tail_{verb,noun,action}_recall5`
    and `unseen_{verb,noun,action}_recall5`, each over the classes present in its subset.
    """
    ranks, labels = _all_ranks(verb_scores, noun_scores, verb_labels, noun_labels, actions)
    metrics = _headline(ranks, labels)
    subsets = _subsets(labels, participant_ids, unseen_participants, tail_verbs, tail_nouns)
    for name in ("tail", "unseen"):
        for task, mask in subsets.get(name, {}).items():
            if mask.any():
                metrics[f"{name}_{task}_recall5"] = mean_class_recall(
                    ranks[task][mask], labels[task][mask], 5
                )
    return metrics


HEADLINE_METRIC = {"recognition": "action_top1", "anticipation": "action_recall5"}
"""The EK100 leaderboard metric of each task: selects best checkpoints, sweeps and table rows."""


def metrics_for(task: str, *args: Any, **kwargs: Any) -> dict[str, float]:
    """`recognition_metrics` or `anticipation_metrics` by task name."""
    if task == "recognition":
        return recognition_metrics(*args, **kwargs)
    if task == "anticipation":
        return anticipation_metrics(*args, **kwargs)
    raise ValueError(f"unknown task {task!r}; choose recognition or anticipation")
