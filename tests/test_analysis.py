"""Selection, ensembles and WiSE: pure functions on hand-built inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftstudy import ensemble, methods
from peftstudy.robustness import check_mergeable, class_subset, procedure, top1, wise
from peftstudy.select import choose


def result(gp, top1, status="ok"):
    return {"gp": gp, "status": status, "metrics": {"val_top1": top1}}


def test_selection_takes_the_best_val_score():
    order = ["a", "b", "c"]
    assert choose([result("a", 50), result("b", 70), result("c", 60)], order)["gp"] == "b"


def test_ties_go_to_the_last_grid_point_as_the_authors_or_the_first():
    results = [result("c", 70), result("a", 70), result("b", 60)]
    assert choose(results, ["a", "b", "c"], "last")["gp"] == "c"
    assert choose(results, ["a", "b", "c"], "first")["gp"] == "a"


def test_diverged_runs_never_win_and_all_diverged_is_an_error():
    assert choose([result("a", 90, "diverged"), result("b", 10)], ["a", "b"])["gp"] == "b"
    with pytest.raises(ValueError, match="every one of the 1 grid points diverged"):
        choose([result("a", 90, "diverged")], ["a"])


def one_hot_logits(pred, classes=3, scale=5.0):
    return np.eye(classes)[pred] * scale


def test_agreement_kappa_and_wrong_overlap_on_known_predictions():
    a, b = np.array([0, 1, 2, 0]), np.array([0, 1, 1, 1])
    assert ensemble.agreement(a, b) == 0.5
    # p_o = 0.5; p_e = P(0)P(0) + P(1)P(1) + P(2)P(2) = .5*.25 + .25*.75 + .25*0 = 0.3125
    assert ensemble.cohen_kappa(a, b) == pytest.approx((0.5 - 0.3125) / (1 - 0.3125))
    assert ensemble.cohen_kappa(a, a) == 1.0
    labels = np.array([0, 1, 2, 2])
    assert ensemble.jaccard(a != labels, b != labels) == pytest.approx(1 / 2)  # wrong: {3} and {2, 3}


def test_probability_averaging_fixes_a_split_vote():
    labels = np.array([0, 1])
    # Method x is confidently right on sample 0 and barely wrong on 1; y the other way round.
    x = np.log(np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]))
    y = np.log(np.array([[0.35, 0.4, 0.25], [0.05, 0.9, 0.05]]))
    ens, pairs = ensemble.analyse({"x": {0: x}, "y": {0: y}}, labels)
    assert ens["members"] == {"x": 50.0, "y": 50.0}
    (pair_ensemble,) = ens["ensembles"]
    assert pair_ensemble["top1"] == 100.0 and pair_ensemble["gain"] == 50.0 and pair_ensemble["oracle_top1"] == 100.0
    assert pairs["pairs"][0]["agreement"] == 0.0


def test_analysis_pairs_seeds_and_reports_the_seed_ensemble_control():
    labels = np.array([0, 1, 2])
    logits = {"x": {0: one_hot_logits([0, 1, 1]), 1: one_hot_logits([0, 1, 2])}, "y": {0: one_hot_logits([0, 0, 2])}}
    ens, _ = ensemble.analyse(logits, labels)
    assert ens["seeds"] == [0]
    assert ens["members"]["x"] == pytest.approx(200 / 3)
    assert set(ens["seed_ensembles"]) == {"x"}


@pytest.mark.parametrize("name", methods.names())
def test_wise_end_points_are_the_zero_shot_and_the_fine_tuned_models(name):
    from peftstudy.models import create_backbone

    torch.manual_seed(0)
    zero_shot_model = create_backbone("peftstudy_vit_test", 3).eval()
    model = create_backbone("peftstudy_vit_test", 3)
    model.load_state_dict(zero_shot_model.state_dict())
    trainable = methods.apply(model, name, methods.get(name).config())
    params = dict(model.named_parameters())
    zero_shot = {n: params[n].detach().clone() for n in trainable}
    with torch.no_grad():
        for n in trainable:
            params[n].add_(torch.randn_like(params[n]) * 0.2)
    fine_tuned = {n: params[n].detach().clone() for n in trainable}
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    fine_tuned_out = model(x)
    added = set(trainable) - set(dict(zero_shot_model.named_parameters()))
    if name.startswith("vpt"):  # prompts cannot be scaled: WiSE is refused, by name
        with pytest.raises(ValueError, match=f"WiSE is not defined for {name}"):
            check_mergeable(model, added, name)
        return
    check_mergeable(model, added, name)
    torch.testing.assert_close(wise(model, zero_shot, fine_tuned, added, 0.0)(x), zero_shot_model(x), rtol=0, atol=0)
    torch.testing.assert_close(wise(model, zero_shot, fine_tuned, added, 1.0)(x), fine_tuned_out, rtol=0, atol=0)
    midway = wise(model, zero_shot, fine_tuned, added, 0.5)(x)
    assert not torch.allclose(midway, fine_tuned_out) and not torch.allclose(midway, zero_shot_model(x))


def test_logit_averaging_and_majority_vote_differ_from_probability_averaging_where_they_should():
    labels = np.array([0])
    # Member a: very sure of class 1 in logits, member b and c: mildly class 0.
    a, b, c = np.array([[0.0, 9.0, 0.0]]), np.array([[2.0, 0.0, 1.9]]), np.array([[2.0, 0.0, 1.9]])
    assert ensemble.top1(ensemble.logit_average([a, b, c]), labels) == 0.0  # mean logits: class 1 (3.0 > 1.33)
    assert ensemble.top1(ensemble.majority_vote([a, b, c]), labels) == 100.0  # two votes for class 0
    tie = ensemble.majority_vote([np.array([[3.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])])
    assert tie.argmax(1)[0] == 0  # one vote each: the surer member's class wins the tie


def test_confident_overlap_counts_the_k_surest_predictions():
    sure = np.array([[9.0, 0.0], [0.0, 9.0], [1.0, 0.0], [0.0, 0.5]])
    other = np.array([[0.0, 0.5], [0.0, 9.0], [9.0, 0.0], [1.0, 0.0]])
    assert ensemble.confident(sure, 2).tolist() == [True, True, False, False]
    assert ensemble.jaccard(ensemble.confident(sure, 2), ensemble.confident(other, 2)) == pytest.approx(1 / 3)
    assert ensemble.confident_count(400, 0.25) == 100 and ensemble.confident_count(400, 5000) == 400
    _, pairs = ensemble.analyse({"a": {0: sure}, "b": {0: other}}, np.array([0, 1, 0, 1]), confident_k=0.5)
    assert pairs["confident_k"] == 2 and pairs["pairs"][0]["confident_jaccard"] == pytest.approx(1 / 3)


def test_selection_by_the_best_evaluation_needs_it_recorded():
    a = {"gp": "a", "status": "ok", "metrics": {"val_top1": 60.0, "val_best_top1": 70.0}}
    b = {"gp": "b", "status": "ok", "metrics": {"val_top1": 65.0, "val_best_top1": 66.0}}
    assert choose([a, b], ["a", "b"])["gp"] == "b"
    assert choose([a, b], ["a", "b"], metric="val_best_top1")["gp"] == "a"
    with pytest.raises(ValueError, match="eval_every"):
        choose([{"gp": "a", "status": "ok", "metrics": {"val_top1": 1.0}}], ["a"], metric="val_best_top1")


def test_head_only_wise_interpolates_the_head_and_keeps_the_rest_fine_tuned():
    from peftstudy.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    trainable = methods.apply(model, "lora", methods.get("lora").config())
    params = dict(model.named_parameters())
    zero_shot = {n: params[n].detach().clone() for n in trainable}
    fine_tuned = {n: zero_shot[n] + 0.3 for n in trainable}
    head = set(methods.head_names(model))
    added = set(trainable) - head
    wise(model, zero_shot, fine_tuned, added, 0.25, only=head)
    for n in trainable:
        expected = 0.75 * zero_shot[n] + 0.25 * fine_tuned[n] if n in head else fine_tuned[n]
        torch.testing.assert_close(params[n], expected)
    assert all(m.merge_factor == 1.0 for m in model.modules() if hasattr(m, "merge_factor"))
    assert procedure(trainable, added, head).startswith("head interpolated")
    assert procedure([*head, "blocks.0.norm1.weight"], set(), head).startswith("state-dict")


def test_a_class_subset_scores_only_its_columns_and_images():
    labels = np.array([0, 1, 2, 3, 1])
    keep, columns = class_subset(labels, [1, 3])
    assert keep.tolist() == [1, 3, 4] and columns.tolist() == [1, 3]
    # Class 0 has the highest logit everywhere, but it is outside the subset: the argmax is among 1 and 3.
    logits = torch.tensor([[9.0, 2.0, 0.0, 1.0], [9.0, 0.0, 0.0, 1.0], [9.0, 3.0, 0.0, 1.0]])
    assert top1(logits, torch.tensor([1, 3, 1]), columns) == 100.0
    assert top1(logits, torch.tensor([1, 3, 1]), np.array([], dtype=np.int64)) == 0.0


def test_tuning_folds_are_averaged_per_grid_point_before_selection():
    from peftstudy.select import average_folds

    def fold(gp, top1, dataset, status="ok"):
        return {"gp": gp, "dataset": dataset, "status": status, "metrics": {"val_top1": top1}}

    results = [fold("a", 90.0, "f0"), fold("a", 50.0, "f1"), fold("b", 70.0, "f0"), fold("b", 68.0, "f1")]
    averaged = {r["gp"]: r["metrics"]["val_top1"] for r in average_folds(results, "val_top1")}
    assert averaged == {"a": 70.0, "b": 69.0}
    assert choose(average_folds(results, "val_top1"), ["a", "b"])["gp"] == "a"  # fold f0 alone would also say a
    results[0]["status"] = "diverged"  # one diverged fold: the grid point is out
    assert choose(average_folds(results, "val_top1"), ["a", "b"])["gp"] == "b"
