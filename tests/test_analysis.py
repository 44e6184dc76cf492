"""Selection, ensembles and WiSE: pure functions on hand-built inputs whose answers are known."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from peftstudy import cli, ensemble, methods
from peftstudy.io import read_json, save_npz, write_json
from peftstudy.plan import stage_specs, study
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.report.tables import ANALYSIS_COLUMNS, analysis_tables
from peftstudy.robustness import check_mergeable, class_subset, procedure, top1, wise
from peftstudy.select import choose
from peftstudy.train.engine import features

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


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


@pytest.mark.parametrize(("name", "distinct", "forward_passes"), [("linear", 3, 1), ("lora", 5, 3)])
def test_each_distinct_wise_model_is_evaluated_once(name, distinct, forward_passes, monkeypatch):
    """alpha = 1 of both variants is the fine-tuned model, and the linear probe's two variants are one (it trains
    the head alone): those points reuse an evaluation; every other point is computed, with the same scores. The
    backbone runs once per backbone state, in the order the robustness stage evaluates (the fine-tuned model,
    the head-only variant, WiSE): the linear probe's backbone never changes, LoRA's head-only points share its
    fine-tuned backbone."""
    from peftstudy import robustness
    from peftstudy.models import create_backbone
    from peftstudy.train.engine import predict

    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    trainable = methods.apply(model, name, methods.get(name).config())
    params = dict(model.named_parameters())
    zero_shot = {n: params[n].detach().clone() for n in trainable}
    fine_tuned = {n: zero_shot[n] + 0.3 * torch.randn_like(zero_shot[n]) for n in trainable}
    with torch.no_grad():
        for n in trainable:
            params[n].copy_(fine_tuned[n])
    head = set(methods.head_names(model))
    added = set(trainable) - head - set(dict(create_backbone("peftstudy_vit_test", 3).named_parameters()))
    sets = {"a": (torch.rand(8, 3, 16, 16), torch.arange(8) % 3, np.array([], dtype=np.int64))}
    passes, computed = [], []
    monkeypatch.setattr(robustness, "features", lambda *args: passes.append(args) or features(*args))
    fresh = robustness.head_logits
    monkeypatch.setattr(robustness, "head_logits", lambda *args: computed.append(args) or fresh(*args))
    evaluations = robustness.Evaluations(sets, 4)
    points = [evaluations(model)]
    for only in (head, None):
        for alpha in (0.0, 0.5, 1.0):
            got = evaluations(wise(model, zero_shot, fine_tuned, added, alpha, only))
            x, y, columns = sets["a"]
            assert got == {"a": top1(predict(model, x, 4), y, columns)}  # reused or not, as a fresh evaluation
            points.append(got)
    assert (len(computed), len(passes)) == (distinct, forward_passes)
    assert points[0] == points[3] == points[6]  # the fine-tuned model, alpha = 1 of either variant


@pytest.mark.parametrize("name", methods.names())
def test_logits_from_cached_pre_logits_are_the_whole_models_bit_for_bit(name):
    """The robustness stage scores head-only changes from the backbone's pre-logits: for every method, the
    logits are the very numbers of a forward pass through the whole model, batch by batch (a last batch short)."""
    from peftstudy.models import create_backbone
    from peftstudy.robustness import head_logits
    from peftstudy.train.engine import predict

    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    trainable = methods.apply(model, name, methods.get(name).config())
    with torch.no_grad():
        for param in (p for n, p in model.named_parameters() if n in trainable):
            param.add_(torch.randn_like(param) * 0.2)
    x = torch.rand(10, 3, 16, 16)
    assert torch.equal(head_logits(model, features(model, x, 4), 4), predict(model, x, 4))


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


def venn_masks():
    """Wrong-prediction masks of a, b, c in which region i of the 7 (a, b, a+b, c, a+c, b+c, a+b+c) holds i + 1
    samples, and 8 samples are in none: every count differs, so a misnamed region cannot pass."""
    patterns = [(1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1), (0, 0, 0)]
    rows = [p for i, p in enumerate(patterns) for _ in range(i + 1)]
    return {name: np.array([r[j] for r in rows], dtype=bool) for j, name in enumerate("abc")}


def test_venn_counts_of_a_triple_and_a_pair():
    masks = venn_masks()
    expected = {"a": 1, "b": 2, "a+b": 3, "c": 4, "a+c": 5, "b+c": 6, "a+b+c": 7}
    assert ensemble.venn(masks) == expected
    assert ensemble.venn({"a": masks["a"], "b": masks["b"]}) == {"a": 1 + 5, "b": 2 + 6, "a+b": 3 + 7}
    assert ensemble.jaccard(*masks.values()) == pytest.approx(7 / 28)
    assert ensemble.jaccard(np.zeros(3, bool), np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_overlaps_of_wrong_predictions_from_logits():
    masks = venn_masks()
    labels = np.zeros(36, dtype=int)  # a wrong prediction is class 1, a right one class 0
    logits = {m: {0: one_hot_logits(mask.astype(int))} for m, mask in masks.items()}
    _, agree = ensemble.analyse(logits, labels)
    (triple,) = agree["triples"]
    assert triple["members"] == ["a", "b", "c"]
    assert triple["wrong_jaccard"] == pytest.approx(7 / 28)
    assert triple["agreement"] == pytest.approx((7 + 8) / 36)  # all wrong alike, or all right
    wrong = {tuple(v["members"]): v["regions"] for v in agree["venn"] if v["kind"] == "wrong"}
    assert wrong["a", "b", "c"]["a+c"] == 5 and wrong["a", "b"] == {"a": 6, "b": 8, "a+b": 10}
    assert len(agree["venn"]) == (3 + 1) * 2  # three pairs and one triple, wrong and confident, one seed


def test_oracle_is_right_where_any_member_is():
    labels = np.array([0, 1, 2, 0])
    members = [one_hot_logits([0, 0, 0, 1]), one_hot_logits([1, 1, 0, 1])]
    assert ensemble.oracle(members, labels) == 50.0
    assert ensemble.combine(members, labels)["oracle_top1"] == 50.0


def test_each_combination_rule_picks_its_own_class():
    # Two members barely for class 0 over class 2, one extreme for 1, one sure of 2. Votes: class 0 (two of four).
    # Mean logits: class 1 (5.0 > 3.5 > 1.0). Mean probabilities: class 2 (.49 > .28 > .24).
    members = [np.array([row]) for row in ([0.0, 20, 0], [2.0, 0, 1.99], [2.0, 0, 1.99], [0.0, 0, 10])]
    picks = {name: int(rule(members).argmax(1)[0]) for name, rule in ensemble.COMBINATIONS.items()}
    assert picks == {"top1": 2, "logit_top1": 1, "vote_top1": 0}
    scores = ensemble.combine(members, np.array([2]))
    assert scores == {"top1": 100.0, "logit_top1": 0.0, "vote_top1": 0.0, "oracle_top1": 100.0}


def test_confidence_against_correctness():
    labels = np.array([0, 1, 0])
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]]))  # predicts 0, 0, 0: the second is wrong
    summary = ensemble.confidence(logits, labels, k=2)
    assert summary["top1"] == pytest.approx(200 / 3) and summary["wrong"] == 1
    assert summary["mean_confidence"] == pytest.approx(2.2 / 3)
    assert summary["confidence_right"] == pytest.approx(0.8) and summary["confidence_wrong"] == pytest.approx(0.6)
    assert summary["confident_top1"] == 100.0  # its two surest (0.9, 0.7) are right
    assert ensemble.confidence(logits, labels, k=3)["confident_top1"] == pytest.approx(200 / 3)
    assert ensemble.confidence(logits, np.zeros(3, dtype=int), k=1)["confidence_wrong"] is None


def test_seed_ensemble_control_against_the_mean_single_seed():
    labels = np.array([0, 1, 2, 0])
    # Each seed is sure where it is right and unsure where it is wrong: 75% and 50% alone, 100% together.
    seed0 = np.array([[5.0, 0, 0], [0, 5, 0], [0, 1, 0], [5, 0, 0]])
    seed1 = np.array([[5.0, 0, 0], [1, 0, 0], [0, 0, 5], [0, 0, 1]])
    control = ensemble.seed_ensemble({1: seed1, 0: seed0}, labels)
    assert control == {
        "seeds": [0, 1],
        "top1": 100.0,
        "logit_top1": 100.0,
        "vote_top1": 100.0,  # one vote each: the surer seed breaks the tie
        "oracle_top1": 100.0,
        "mean_seed_top1": 62.5,
        "gain": 37.5,
    }
    # Through analyse: only methods with two seeds or more, with all their seeds (not only the shared ones).
    ens, agree = ensemble.analyse({"x": {0: seed0, 1: seed1}, "y": {0: seed0}}, labels)
    assert ens["seed_ensembles"] == {"x": control} and ens["seeds"] == [0]
    assert [(c["method"], c["seed"]) for c in agree["confidence"]] == [("x", 0), ("x", 1), ("y", 0)]


def test_configured_methods_choose_the_ensembled_pairs_and_triples():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    logits = {m: {0: rng.normal(size=(50, 4)), 1: rng.normal(size=(50, 4))} for m in "abcd"}
    ens, agree = ensemble.analyse(logits, labels, methods=["c", "a", "b"])
    sets = [e["members"] for e in ens["ensembles"]]
    assert sets == [["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"], ["a", "b", "c", "d"]]
    assert ens["ensemble_methods"] == ["a", "b", "c"] and len(agree["pairs"]) == 6  # agreement: every pair
    assert [t["members"] for t in agree["triples"]] == [["a", "b", "c"]]
    assert len(agree["venn"]) == (6 + 1) * 2 * 2  # pairs and the triple, two kinds, two seeds
    with pytest.raises(ValueError, match="analysis methods zz have no finals here; methods: a, b, c, d"):
        ensemble.analyse(logits, labels, methods=["a", "zz"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["analysis"]["methods"].update(vtab=["lora", "lorra"]), "analysis.methods.vtab[1]: 'lorra' is"),
        (lambda c: c["analysis"]["methods"].update(robustness=["lora", "ssf"]), "'ssf' is not one of this"),
        (lambda c: c["analysis"]["methods"].update(vtb=["lora", "ssf"]), "unknown experiment 'vtb'"),
    ],
)
def test_analysis_methods_must_be_the_experiments_own(edit, message):
    config = copy.deepcopy(DEFAULT)
    edit(config)
    with pytest.raises(study.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        study.check(config)
    if "unknown experiment" not in message:
        assert "(linear, full, bitfit" in str(err.value)  # the experiment's methods are listed


def fake_finals(tmp_path, experiment: str, dataset: str) -> list[str]:
    """final.json records and logits.npz of every method and seed of an experiment of the mini study."""
    exp, spec = DEFAULT["experiments"][experiment], DEFAULT["datasets"][dataset]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, spec["classes"], spec["test"])
    records = []
    for method in exp["methods"]:
        runs = []
        for seed in exp["seeds"]:
            run_dir = tmp_path / experiment / dataset / method / "final" / f"seed{seed}"
            run_dir.mkdir(parents=True)
            # Logits nearer the label for some samples: accuracy and agreement between chance and 1.
            logits = rng.normal(size=(len(labels), spec["classes"])) + 2.0 * np.eye(spec["classes"])[labels]
            save_npz(run_dir / "logits.npz", logits=logits.astype(np.float32), labels=labels)
            files = {"metrics.json": "", "logits.npz": "", "peft.safetensors": ""}
            runs.append({"seed": seed, "dir": str(run_dir), "status": "ok", "test_top1": None, "sha256": files})
        record = {"experiment": experiment, "dataset": dataset, "method": method, "gp": "0123abcd", "hp": {}}
        path = tmp_path / experiment / dataset / method / "final.json"
        write_json(path, {**record, "trainable_params": 0, "runs": runs}, schema="final")
        records.append(str(path))
    return records


def test_the_mini_studys_analysis_files_are_valid_and_take_every_path(tmp_path):
    """The mini study's experiments, on fake logits, through the CLI the ensemble rule calls: the files validate
    against their schemas, and their tables hold triples (vtab's configured trio, robustness's default 4
    methods) and the seed control (robustness's 2 seeds)."""
    paths = []
    for experiment, exp in DEFAULT["experiments"].items():
        dataset = exp["datasets"][0]
        analysis = tmp_path / experiment / dataset / "analysis"
        chosen = DEFAULT["analysis"]["methods"].get(experiment, exp["methods"])
        out = {kind: str(analysis / f"{kind}.json") for kind in ("ensembles", "agreement")}
        finals = tuple(fake_finals(tmp_path, experiment, dataset))
        logits = tuple(f"{run['dir']}/logits.npz" for final in finals for run in read_json(final)["runs"])
        spec = stage_specs.EnsembleSpec(
            finals=finals, logits=logits, methods=tuple(chosen), confident_k=DEFAULTS["confident_k"], **out
        )
        cli.main(["run", spec.to_json()])
        paths += [{"experiment": experiment, "dataset": dataset, "kind": k, "path": p} for k, p in out.items()]
        ens = read_json(analysis / "ensembles.json", schema="ensembles")
        agree = read_json(analysis / "agreement.json", schema="agreement")
        # vtab: the trio's 3 pairs, itself, all 16; robustness: 6 pairs and 4 triples of its 4 methods, all 4.
        assert len(ens["ensembles"]) == {"vtab": 3 + 1 + 1, "robustness": 6 + 4 + 1}[experiment]
        assert len(agree["confidence"]) == len(exp["methods"]) * len(exp["seeds"])
    tables = analysis_tables(paths)
    assert set(tables) == set(ANALYSIS_COLUMNS)
    for name, frame in tables.items():
        assert len(frame) > 0 and list(frame.columns) == ANALYSIS_COLUMNS[name], name
    assert set(tables["seed_ensembles"]["experiment"]) == {"robustness"}
    assert set(tables["triples"]["experiment"]) == {"vtab", "robustness"}
    assert set(tables["venn"]["region"].str.count(r"\+")) == {0, 1, 2}
