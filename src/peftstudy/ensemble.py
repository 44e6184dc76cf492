"""Ensembles and agreement of the methods' final test predictions, per dataset (STUDY.md F).

Pure functions over logits and labels; :func:`run` is the I/O edge. Members are aligned by seed:
the ensemble of a method set at seed k averages those methods' seed-k probabilities, and every
figure is then averaged over the seeds all methods share.
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from peftstudy.io import load_npz, read_json, write_json


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


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of samples on which two predictors give the same class."""
    return float((pred_a == pred_b).mean())


def cohen_kappa(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Agreement corrected for chance: (p_o - p_e) / (1 - p_e); 1.0 when both are one constant class."""
    classes = np.union1d(pred_a, pred_b)
    p_o = agreement(pred_a, pred_b)
    p_e = float(sum((pred_a == c).mean() * (pred_b == c).mean() for c in classes))
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two boolean masks; 1.0 when both are empty."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


def analyse(
    logits: Mapping[str, Mapping[int, np.ndarray]], labels: np.ndarray, confident_k: float = 0.25
) -> tuple[dict, dict]:
    """(ensembles, agreement) for {method: {seed: logits}} on one test set.

    Ensembles by probability averaging (`top1`), logit averaging and majority vote; pairs by agreement, kappa,
    and the Jaccard overlap of their wrong predictions and of their K most confident ones.
    """
    methods = sorted(logits)
    seeds = sorted(set.intersection(*(set(logits[m]) for m in methods)))
    if not seeds:
        raise ValueError("the methods share no seed, so their predictions cannot be paired")
    members = {m: float(np.mean([top1(logits[m][s], labels) for s in seeds])) for m in methods}
    # Every pair and triple, and all methods together (STUDY.md F): every subset of 16 methods would be 65k.
    sets = [c for k in (2, 3) if k < len(methods) for c in itertools.combinations(methods, k)] + [tuple(methods)]
    ensembles = []
    for combo in sets:
        scores = {
            name: float(np.mean([top1(rule([logits[m][s] for m in combo]), labels) for s in seeds]))
            for name, rule in COMBINATIONS.items()
        }
        # The oracle: some member is right. An upper bound for any combination rule.
        oracle = [
            float(100.0 * np.any([logits[m][s].argmax(1) == labels for m in combo], axis=0).mean()) for s in seeds
        ]
        best = max(members[m] for m in combo)
        ensembles.append(
            {
                "members": list(combo),
                **scores,
                "best_member_top1": best,
                "gain": scores["top1"] - best,
                "oracle_top1": float(np.mean(oracle)),
            }
        )
    controls = {
        m: top1(prob_average([logits[m][s] for s in sorted(logits[m])]), labels) for m in methods if len(logits[m]) > 1
    }
    pairs = []
    for a, b in itertools.combinations(methods, 2):
        stats = defaultdict(list)
        for s in seeds:
            pa, pb = logits[a][s].argmax(1), logits[b][s].argmax(1)
            stats["agreement"].append(agreement(pa, pb))
            stats["kappa"].append(cohen_kappa(pa, pb))
            stats["wrong_jaccard"].append(jaccard(pa != labels, pb != labels))
            k = confident_count(len(labels), confident_k)
            stats["confident_jaccard"].append(jaccard(confident(logits[a][s], k), confident(logits[b][s], k)))
        pairs.append({"a": a, "b": b, **{k: float(np.mean(v)) for k, v in stats.items()}})
    ensembles_out = {
        "methods": methods,
        "seeds": seeds,
        "n_test": len(labels),
        "combination": "top1: probability averaging; logit_top1: logit averaging; vote_top1: majority vote",
        "members": members,
        "ensembles": ensembles,
        "seed_ensembles": controls,
    }
    k = confident_count(len(labels), confident_k)
    return ensembles_out, {"methods": methods, "seeds": seeds, "confident_k": k, "pairs": pairs}


def run(args: argparse.Namespace) -> None:
    logits: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    labels = None
    for final in args.finals:
        record = read_json(final, schema="final")
        for run_ in record["runs"]:
            path = f"{run_['dir']}/logits.npz"
            data = load_npz(path)
            if labels is not None and not np.array_equal(labels, data["labels"]):
                raise ValueError(f"{path}: its test labels differ from the other methods'; were they one test set?")
            labels = data["labels"]
            logits[record["method"]][run_["seed"]] = data["logits"]
    ensembles, pairs = analyse(logits, labels, args.confident_k)
    write_json(args.out_ensembles, ensembles, schema="ensembles")
    write_json(args.out_agreement, pairs, schema="agreement")
