"""Confidence, agreement, overlaps and ensembles of the methods' final test predictions, per dataset
(docs/protocol.md §F).

Pure functions over logits and labels; :func:`run` is the I/O edge. Members are aligned by seed:
the ensemble of a method set at seed k averages those methods' seed-k probabilities, and every
figure is then averaged over the seeds all methods share. A method's own seeds, ensembled, are the control.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from peftstudy.io import load_npz, read_json, write_json
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import EnsembleSpec, final_runs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * (scores.argmax(1) == labels).mean())


def prob_average(logits: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's probabilities: the mean of the members' softmax probabilities."""
    return np.mean([softmax(x) for x in logits], axis=0)


def logit_average(logits: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's scores: the mean of the members' logits."""
    return np.mean(logits, axis=0)


def majority_vote(logits: Sequence[np.ndarray]) -> np.ndarray:
    """Votes per class (one per member's argmax); ties broken by the averaged probabilities (< 1 vote)."""
    classes = logits[0].shape[1]
    votes = np.sum([np.eye(classes)[x.argmax(1)] for x in logits], axis=0)
    return votes + prob_average(logits) / (len(logits) + 1)


COMBINATIONS = {"top1": prob_average, "logit_top1": logit_average, "vote_top1": majority_vote}


def confident(logits: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k test samples predicted with the highest softmax confidence."""
    mask = np.zeros(len(logits), dtype=bool)
    mask[np.argsort(-softmax(logits).max(axis=1), kind="stable")[:k]] = True
    return mask


def confident_count(n: int, k: float) -> int:
    """K for the confident-set overlap: a count (5,000 in the paper's Fig. 1b), or a fraction of n when below 1."""
    return max(1, min(n, round(k * n) if k < 1 else int(k)))


def agreement(*preds: np.ndarray) -> float:
    """Fraction of samples on which all predictors give the same class."""
    return float(np.all([p == preds[0] for p in preds[1:]], axis=0).mean())


def cohen_kappa(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Agreement corrected for chance: (p_o - p_e) / (1 - p_e); 1.0 when both are one constant class."""
    classes = np.union1d(pred_a, pred_b)
    p_o = agreement(pred_a, pred_b)
    p_e = float(sum((pred_a == c).mean() * (pred_b == c).mean() for c in classes))
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def jaccard(*masks: np.ndarray) -> float:
    """|A ∩ B ∩ ...| / |A ∪ B ∪ ...| of boolean masks; 1.0 when all are empty."""
    union = int(np.any(masks, axis=0).sum())
    return 1.0 if union == 0 else float(np.all(masks, axis=0).sum() / union)


def venn(masks: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Venn region counts of named boolean masks: each region holds the samples in exactly those masks and is
    named by them, joined with '+' in the given order (a pair: a, b, a+b; a triple: its 7 regions).
    """
    names = list(masks)
    stacked = np.stack([masks[n] for n in names])
    regions = {}
    for size in range(1, len(names) + 1):
        for inside in itertools.combinations(range(len(names)), size):
            pattern = np.isin(np.arange(len(names)), inside)[:, None]
            regions["+".join(names[i] for i in inside)] = int((stacked == pattern).all(axis=0).sum())
    return regions


def oracle(logits: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 of an oracle that picks a right member whenever there is one: a bound on any combination rule."""
    return float(100.0 * np.any([x.argmax(1) == labels for x in logits], axis=0).mean())


def combine(logits: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Top-1 of each combination rule, and the oracle, on one set of aligned members."""
    scores = {name: top1(rule(logits), labels) for name, rule in COMBINATIONS.items()}
    return {**scores, "oracle_top1": oracle(logits, labels)}


def confidence(logits: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float | int | None]:
    """One predictor's softmax confidence (max probability) against its correctness.

    The confidence means over right and over wrong predictions are None when there are none.
    """
    probs = softmax(logits)
    sure, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    return {
        "top1": float(100.0 * right.mean()),
        "mean_confidence": float(sure.mean()),
        "confidence_right": float(sure[right].mean()) if right.any() else None,
        "confidence_wrong": float(sure[~right].mean()) if not right.all() else None,
        "wrong": int((~right).sum()),
        "confident_top1": float(100.0 * right[confident(logits, k)].mean()),
    }


def seed_ensemble(logits: Mapping[int, np.ndarray], labels: np.ndarray) -> dict:
    """The same-method control: one method's seeds combined, against its mean single seed.

    If methods differ in their errors more than seeds do, a pair of methods gains more than this.
    """
    seeds = sorted(logits)
    scores = combine([logits[s] for s in seeds], labels)
    mean_seed = float(np.mean([top1(logits[s], labels) for s in seeds]))
    return {"seeds": seeds, **scores, "mean_seed_top1": mean_seed, "gain": scores["top1"] - mean_seed}


def analyse(
    logits: Mapping[str, Mapping[int, np.ndarray]],
    labels: np.ndarray,
    confident_k: float = 0.25,
    methods: Sequence[str] | None = None,
) -> tuple[dict, dict]:
    """(ensembles, agreement) for {method: {seed: logits}} on one test set.

    Members are aligned by seed: a figure over a method set is computed at each seed all methods share, then
    averaged (Venn counts stay per seed, as counts). `methods` (default: all) is the set whose pairs and
    triples are ensembled and whose triples get Venn diagrams; every pair of all methods gets agreement,
    kappa and Venn counts, and all methods together are ensembled too.
    """
    everyone = sorted(logits)
    chosen = sorted(methods) if methods is not None else everyone
    unknown = [m for m in chosen if m not in logits]
    if unknown:
        raise ValueError(f"analysis methods {', '.join(unknown)} have no finals here; methods: {', '.join(everyone)}")
    # No method at all when every one diverged on this dataset: empty analyses (the tables say why).
    seeds = sorted(set.intersection(*(set(logits[m]) for m in everyone))) if everyone else []
    if everyone and not seeds:
        raise ValueError("the methods share no seed, so their predictions cannot be paired")
    k = confident_count(len(labels), confident_k)
    members = {m: float(np.mean([top1(logits[m][s], labels) for s in seeds])) for m in everyone}
    # Every pair and triple of the chosen set, and all methods together (docs/protocol.md §F): every subset of 16
    # methods would be 65k. dict.fromkeys drops the all-methods set when it is one of the triples already.
    pairs = list(itertools.combinations(chosen, 2))
    triples = list(itertools.combinations(chosen, 3))
    together = [tuple(everyone)] if len(everyone) > 1 else []  # one method left (the others all diverged)
    sets = list(dict.fromkeys([*pairs, *triples, *together]))
    ensembles = []
    for combo in sets:
        per_seed = [combine([logits[m][s] for m in combo], labels) for s in seeds]
        scores = {name: float(np.mean([p[name] for p in per_seed])) for name in per_seed[0]}
        best = max(members[m] for m in combo)
        ensembles.append({"members": list(combo), **scores, "best_member_top1": best, "gain": scores["top1"] - best})
    controls = {m: seed_ensemble(logits[m], labels) for m in everyone if len(logits[m]) > 1}
    preds = {(m, s): logits[m][s].argmax(1) for m in everyone for s in seeds}
    masks = {
        "wrong": {key: pred != labels for key, pred in preds.items()},
        "confident": {(m, s): confident(logits[m][s], k) for m in everyone for s in seeds},
    }

    def overlap(combo: tuple[str, ...]) -> dict:
        """Agreement and the Jaccard overlaps of a pair or triple, averaged over seeds."""
        stats = defaultdict(list)
        for s in seeds:
            stats["agreement"].append(agreement(*(preds[m, s] for m in combo)))
            if len(combo) == 2:
                stats["kappa"].append(cohen_kappa(*(preds[m, s] for m in combo)))
            for kind, by_run in masks.items():
                stats[f"{kind}_jaccard"].append(jaccard(*(by_run[m, s] for m in combo)))
        return {name: float(np.mean(values)) for name, values in stats.items()}

    venns = [
        {"members": list(combo), "kind": kind, "seed": s, "regions": venn({m: by_run[m, s] for m in combo})}
        for combo in [*itertools.combinations(everyone, 2), *triples]
        for kind, by_run in masks.items()
        for s in seeds
    ]
    ensembles_out = {
        "methods": everyone,
        "ensemble_methods": chosen,
        "seeds": seeds,
        "n_test": len(labels),
        "combination": "top1: probability averaging; logit_top1: logit averaging; vote_top1: majority vote",
        "members": members,
        "ensembles": ensembles,
        "seed_ensembles": controls,
    }
    agreement_out = {
        "methods": everyone,
        "seeds": seeds,
        "confident_k": k,
        "confidence": [
            {"method": m, "seed": s, **confidence(logits[m][s], labels, k)} for m in everyone for s in sorted(logits[m])
        ],
        "pairs": [{"a": a, "b": b, **overlap((a, b))} for a, b in itertools.combinations(everyone, 2)],
        "triples": [{"members": list(combo), **overlap(combo)} for combo in triples],
        "venn": venns,
    }
    return ensembles_out, agreement_out


def run(spec: EnsembleSpec, options: Options) -> None:
    logits: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    labels = None
    records = [read_json(final, schema="final") for final in spec.finals]
    for record in records:
        if record.get("status") == "all-diverged":  # no final to compare: left out, the tables say why
            print(f"{record['method']}: every grid point diverged, left out of the analysis", flush=True)
    for record, run_, path in final_runs(records, "logits", spec.logits, spec.stage):
        data = load_npz(path)
        if labels is not None and not np.array_equal(labels, data["labels"]):
            raise ValueError(f"{path}: its test labels differ from the other methods'; were they one test set?")
        labels = data["labels"]
        logits[record["method"]][run_["seed"]] = data["logits"]
    all_diverged = [record["method"] for record in records if record.get("status") == "all-diverged"]
    chosen = [m for m in spec.methods if m not in all_diverged]
    no_test = np.zeros(0, dtype=np.int64)  # every method diverged: no final, so no test set was read
    ensembles, pairs = analyse(logits, labels if labels is not None else no_test, spec.confident_k, chosen)
    write_json(spec.ensembles, ensembles, schema="ensembles")
    write_json(spec.agreement, pairs, schema="agreement")
