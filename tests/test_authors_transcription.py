"""report/data/authors_*.csv, transcribed from the authors' result files by `python -m peftstudy.report.authors`:
the script on a small checkout made here, and on the authors' own files where they are beside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from peftstudy.data.manyshot import COMMIT
from peftstudy.report import authors, tables

DATA = REPO / "report" / "data"
CHECKOUT = authors.default_checkout(REPO)
OWNED = ("authors_vtab1k_tune.csv", "authors_vtab1k_selection.csv", "authors_reruns.csv")
TUNE_HEADER = "param_set,train_loss,train_top1,train_top5,val_loss,val_top1,val_top5"
FINAL_HEADER = "run_idx,train_loss,train_top1,train_top5,test_loss,test_top1,test_top5"


@pytest.mark.skipif(
    not CHECKOUT.is_dir(), reason=f"the authors' result files are not beside the repository ({CHECKOUT})"
)
def test_regenerating_from_the_authors_checkout_changes_no_file(capsys: pytest.CaptureFixture[str]):
    assert authors.main(["--check", str(CHECKOUT)], repo=REPO) == 0
    assert capsys.readouterr().out.splitlines() == [f"{DATA / name}: unchanged" for name in OWNED]


def write_run(folder: Path, points: list[tuple[dict, float]], best: dict, tests: list[float]) -> None:
    """One (task, method) folder as the authors' code leaves it: tune summary, final result, final summary."""
    folder.mkdir(parents=True)
    tune = [f'"{hp}",0.1,99.0,100.0,1.0,{val},90.0' for hp, val in points]
    (folder / "tune_summary.csv").write_text("\n".join([TUNE_HEADER, *tune]) + "\n")
    (folder / "final_result.json").write_text(json.dumps({"avg_acc": tests[-1], "best_tune": best}))
    # A rerun of the same final appends its header and its row.
    (folder / "final_summary.csv").write_text(
        "".join(f"{FINAL_HEADER}\n0,0.1,99.0,100.0,1.0,{t},90.0\n" for t in tests)
    )


LINEAR = [{"lr": 0.001, "wd": 0.0001}, {"lr": 0.01, "wd": 0.0001}]
LORA = [{"lora_bottleneck": 8, "lr": 0.001, "wd": 0.0001}, {"lora_bottleneck": 1, "lr": 0.001, "wd": 0.0001}]


def small_checkout(root: Path) -> Path:
    """Two VTAB tasks (svhn written first, dtd first in the study) x linear and LoRA, and one many-shot final."""
    vtab = root / "tune_output" / "default_vtab" / "processed_vtab"
    # Their best_tune with its keys in another order than param_set's: the same point.
    write_run(vtab / "svhn" / "lora", [(LORA[0], 80.5), (LORA[1], 81.0)], dict(reversed(LORA[1].items())), [85.0])
    write_run(vtab / "svhn" / "linear", [(LINEAR[0], 40.0), (LINEAR[1], 39.5)], LINEAR[0], [41.0])
    write_run(vtab / "dtd" / "lora", [(LORA[0], 66.0), (LORA[1], 65.0)], LORA[0], [70.37, 68.99])
    write_run(vtab / "dtd" / "linear", [(LINEAR[0], 60.0), (LINEAR[1], 61.5)], LINEAR[1], [62.0])
    many = root / "tune_output" / "clevr_tune_lr" / "clevr" / "clevr"
    write_run(many / "lora_8", [(LORA[0], 91.0)], LORA[0], [91.77])
    return root


def test_a_checkout_becomes_the_tables_in_the_studys_order_and_each_change_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    checkout, data = small_checkout(tmp_path / "petl_vision"), tmp_path / "data"
    assert authors.main([str(checkout), "--data", str(data)], repo=REPO) == 1
    assert capsys.readouterr().out.splitlines() == [f"{data / name}: new" for name in OWNED]
    for name in OWNED:
        head = (data / name).read_text().splitlines()[0]
        assert head.startswith("# source:") and f"OSU-MLB/PETL_Vision at commit {COMMIT}" in head

    tune = tables.read_authors(data / "authors_vtab1k_tune.csv")
    assert list(tune.columns) == ["method", "authors_hp", "dtd", "svhn"]
    assert tune["method"].tolist() == ["linear", "linear", "lora", "lora"]  # the study's order, theirs within
    assert [json.loads(hp) for hp in tune["authors_hp"]] == LINEAR + LORA
    assert tune[["dtd", "svhn"]].values.tolist() == [[60.0, 40.0], [61.5, 39.5], [66.0, 80.5], [65.0, 81.0]]

    chosen = tables.read_authors(data / "authors_vtab1k_selection.csv")
    assert chosen[["task", "method", "val_top1"]].values.tolist() == [
        ["dtd", "linear", 61.5],
        ["dtd", "lora", 66.0],
        ["svhn", "linear", 40.0],
        ["svhn", "lora", 81.0],
    ]
    assert json.loads(chosen.at[3, "authors_hp"]) == LORA[1]
    assert json.loads(chosen.at[3, "hp"]) == {"lr": 0.001, "r": 1, "wd": 0.0001}  # in our grid keys

    reruns = pd.read_csv(data / "authors_reruns.csv", comment="#", dtype=str, keep_default_na=False)  # as text
    assert reruns.values.tolist() == [
        ["clevr_tune_lr", "clevr_dist", "full", "lora", "8", "91.77"],
        ["default_vtab", "dtd", "", "linear", "", "62.0"],
        ["default_vtab", "dtd", "", "lora", "", "70.37 68.99"],
        ["default_vtab", "svhn", "", "linear", "", "41.0"],
        ["default_vtab", "svhn", "", "lora", "", "85.0"],
    ]
    assert (
        "# finals: 5 files; reruns: default_vtab: of 4 finals 1 ran twice" in (data / "authors_reruns.csv").read_text()
    )

    # Run again: nothing changed. Then a val score of a point they did not choose: only the grid's table changes,
    # and --check says so without writing it.
    assert authors.main([str(checkout), "--data", str(data), "--check"], repo=REPO) == 0
    assert capsys.readouterr().out.count(": unchanged") == 3
    before = (data / "authors_vtab1k_tune.csv").read_text()
    summary = checkout / "tune_output" / "default_vtab" / "processed_vtab" / "svhn" / "linear" / "tune_summary.csv"
    summary.write_text(summary.read_text().replace(",39.5,", ",39.0,"))
    assert authors.main([str(checkout), "--data", str(data), "--check"], repo=REPO) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{data / 'authors_vtab1k_tune.csv'}: changed",
        f"{data / 'authors_vtab1k_selection.csv'}: unchanged",
        f"{data / 'authors_reruns.csv'}: unchanged",
    ]
    assert (data / "authors_vtab1k_tune.csv").read_text() == before
    assert authors.main([str(checkout), "--data", str(data)], repo=REPO) == 1
    assert tables.read_authors(data / "authors_vtab1k_tune.csv").at[1, "svhn"] == 39.0
    assert authors.main([str(checkout), "--data", str(data), "--check"], repo=REPO) == 0


def test_a_checkout_the_tables_cannot_come_from_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exit_:
        authors.main([str(tmp_path / "nowhere")], repo=REPO)
    assert (
        exit_.value.code == 2 and "nowhere: no tune_output/default_vtab/processed_vtab in it" in capsys.readouterr().err
    )

    checkout = small_checkout(tmp_path / "petl_vision")
    dtd = checkout / "tune_output" / "default_vtab" / "processed_vtab" / "dtd"
    result = dtd / "lora" / "final_result.json"
    result.write_text(json.dumps({"best_tune": {"lora_bottleneck": 4, "lr": 0.001, "wd": 0.0001}}))
    with pytest.raises(SystemExit):
        authors.main([str(checkout), "--check"], repo=REPO)
    assert f"{result}: best_tune" in capsys.readouterr().err

    summary = dtd / "linear" / "tune_summary.csv"
    summary.write_text(summary.read_text().replace("'lr': 0.01,", "'lr': 0.1,"))
    with pytest.raises(SystemExit):
        authors.main([str(checkout), "--check"], repo=REPO)
    assert (
        f"{checkout}/tune_output/default_vtab/processed_vtab/svhn/linear/tune_summary.csv: its grid points differ"
        in (capsys.readouterr().err)
    )
