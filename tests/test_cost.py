"""The cost estimate before a run (issue 16): its jobs and runs are the plan's, its images and GPU-hours follow
from the sizes and the measured rates, its fallbacks are labelled, and the planning tier never imports torch."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, report_spec, tiny_config

from peftstudy.plan import cost, study
from peftstudy.plan.jobs import Plan

ARCH = "peftstudy_vit_mini"


def rates(**per_method: float) -> list[cost.Rate]:
    return [cost.Rate("X1", ARCH, method, "bf16", rate, "test") for method, rate in per_method.items()]


def plan_counts(plan: Plan, experiment: str) -> tuple[int, int, int, int]:
    """(tune jobs, final jobs, tune runs, final runs) of an experiment, straight from the plan's job lists."""
    exp = plan.experiments[experiment]
    runs = [run for run in plan.layout.runs() if run[0] == experiment]
    tune_jobs = len(plan.tune_metrics(experiment))
    final_jobs = sum(len(plan.layout.final_benchmarks(*run, "00000000")) for run in runs)
    tuned_sets = sum(1 + len(plan.datasets[d].get("folds", [])) for d in exp["datasets"])
    tune_runs = tuned_sets * sum(len(plan.grids[experiment, m]) for m in exp["methods"])
    return tune_jobs, final_jobs, tune_runs, len(runs) * len(exp["seeds"])


def test_the_tiny_study_counts_its_jobs_runs_images_and_gpu_hours(tmp_path):
    config = tiny_config()
    config["resources"] = {"tune": {"gpu": 1}, "final": {"gpu": 2}}
    plan = Plan.of(config)
    est = cost.estimate(plan, "x1", rates(lora=200.0, bitfit=400.0, linear=100.0))
    by_name = {e.experiment: e for e in est.experiments}
    for name, e in by_name.items():
        assert (e.tune_jobs, e.final_jobs, e.tune_runs, e.final_runs) == plan_counts(plan, name)
    # Packed robustness: 2 grid points a tune job; a final job per seed.
    assert (by_name["robustness"].tune_jobs, by_name["robustness"].final_jobs) == (2, 4)
    assert est.training_jobs + est.other_jobs == 6 + 4 + 2 + 4 + 2  # + one robustness job per method
    # vtab: 2 datasets of 48 train + 32 val, 2 epochs; linear 1 grid point, lora 2; one seed.
    linear = 2 * (1 * 2 * 48 * 1 + 1 * 2 * 80 * 2)  # images x GPUs: tune jobs ask for 1, final jobs for 2
    lora = 2 * (2 * 2 * 48 * 1 + 1 * 2 * 80 * 2)
    assert by_name["vtab"].images == 2 * (3 * 2 * 48 + 2 * 2 * 80)
    assert by_name["vtab"].gpu_hours == pytest.approx((linear / 100 + lora / 200) / 3600)
    text = cost.render(est, plan)
    assert "vtab/lora" in text and "measured" in text and "Slurm jobs: 18 = 8 tune + 8 final + 2" in text


def test_an_unmeasured_method_falls_back_to_the_slowest_of_its_class_and_says_so():
    table = [*rates(lora=200.0, bitfit=400.0, full=150.0), cost.Rate("X1", "other", "full", "bf16", 90.0, "t")]
    assert cost.rate_for(table, "x1", ARCH, "lora", "bf16") == (table[0], "measured")
    rate, note = cost.rate_for(table, "X1", ARCH, "vpt_deep", "bf16")
    assert rate.method == "lora" and note.startswith("fallback: the method not measured; the slowest measured frozen")
    rate, note = cost.rate_for(table, "X1", "clip_vit", "full", "bf16")
    assert rate.images_per_second == 90.0 and "model clip_vit not measured" in note  # the slowest full row
    rate, note = cost.rate_for(table, "X1", ARCH, "full", "fp32")
    assert rate.images_per_second == 150.0 and "precision fp32 not measured" in note
    with pytest.raises(ValueError, match=r"--gpu A100: no measured throughput .* measured: X1"):
        cost.rate_for(table, "A100", ARCH, "lora", "bf16")


def test_the_paper_study_estimate_counts_what_the_plan_has_without_torch():
    """As `peftstudy estimate` runs it, from the repository root (the includes' paths): the table, the VTAB-1K
    sweep's known size, every experiment's counts equal to the plan's, torch never imported."""
    probe = (
        "import sys\n"
        "from peftstudy.plan import cost\n"
        "from peftstudy.plan.jobs import Plan\n"
        "plan = Plan.of(cost.load_config(['studies/paper.yaml']))\n"
        "est = cost.estimate(plan, 'H100', cost.read_rates())\n"
        "print(cost.render(est, plan))\n"
        "print('TORCH', 'torch' in sys.modules)\n"
        "import json; print('COUNTS', json.dumps({e.experiment: [e.tune_jobs, e.final_jobs, e.tune_runs,"
        " e.final_runs, e.images, e.unsized] for e in est.experiments}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert "TORCH False" in proc.stdout
    counts = yaml.safe_load(proc.stdout.split("COUNTS ", 1)[1])
    config = study.compose(yaml.safe_load((REPO / "studies/paper.yaml").read_text()))
    plan = Plan.of(config)
    for name, (tune_jobs, final_jobs, tune_runs, final_runs, _, unsized) in counts.items():
        assert (tune_jobs, final_jobs, tune_runs, final_runs) == plan_counts(plan, name), name
        assert unsized == [], name
    # VTAB-1K as docs/protocol.md §B.2 counts it: 9,804 tune runs of 100 epochs on 800 images (in 19 x 27 dense jobs),
    # 304 finals on 1,000.
    assert counts["vtab"][:5] == [19 * 27, 304, 9_804, 304, 9_804 * 100 * 800 + 304 * 100 * 1_000]
    # CLIP few-shot: 100 shots x 1000 classes for tuning and the final run alike.
    assert counts["clip_fewshot"][4] == (30 + 15) * 100 * 100_000
    assert "H100 GPU-hours" in proc.stdout and "fallback" in proc.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "peftstudy.cli", "estimate", "--configfile", "studies/paper.yaml", "--gpu", "h100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout == proc.stdout.split("TORCH")[0]


@pytest.mark.parametrize(
    ("spec", "sizes"),
    [
        ({"source": "manyshot", "kind": "resisc45", "subset": "225", "archive": "a", "classes": 45}, (180, 225)),
        ({"source": "manyshot", "kind": "resisc45", "subset": "full", "archive": "a", "classes": 45}, (22680, 25200)),
        ({"source": "manyshot", "kind": "cifar100", "subset": "full", "archive": "a", "classes": 100}, (49000, 50000)),
        ({"source": "tfds", "vtab_task": "clevr_dist_manyshot", "classes": 6}, (63000, 70000)),
        ({"source": "tfds", "vtab_task": "dtd", "classes": 47}, (800, 1000)),
        ({"source": "archive", "archive": "a", "folder": "vtab-1k/dtd", "classes": 47}, (800, 1000)),
        ({"source": "manual", "set": "imagenet", "path": "p", "classes": 1000, "shots": 16}, (16000, 16000)),
        ({"source": "archive", "archive": "a", "folder": "my-own-images", "classes": 3}, None),
    ],
)
def test_train_sizes_come_from_the_spec_the_protocol_or_the_lists(spec, sizes):
    found = cost.train_sizes({"datasets": {"d": spec}}, "d")
    assert (found[:2] if found else None) == sizes


def test_the_shipped_throughput_table_is_measured_rows_with_their_source():
    table = cost.read_rates()
    assert table and all(r.images_per_second > 0 and r.source for r in table)
    assert {(r.model, r.precision) for r in table} == {("vit_base_patch16_224", "bf16")}


def test_the_throughput_benchmark_writes_rows_the_estimate_reads():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks/train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    args = argparse.Namespace(
        arch=ARCH, batch_size=64, n=512, native_size=320, image_size=224, drop_path=0.1, repeats=3
    )
    rows = bench.throughput_rows(args, torch.device("cpu"), {"lora": {"fp32": (123.4, None), "bf16": (200.0, 1.0)}})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=cost.THROUGHPUT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    read = cost.read_rates(list(csv.DictReader(io.StringIO(out.getvalue()))))
    assert [(r.gpu, r.model, r.method, r.precision, r.images_per_second) for r in read] == [
        ("CPU", ARCH, "lora", "fp32", 123.0),
        ("CPU", ARCH, "lora", "bf16", 200.0),
    ]
    assert "batch 64" in read[0].source and "median of 3 repetitions" in read[0].source


def test_a_broken_study_config_stops_the_estimate_naming_the_key(tmp_path, capsys):
    config = tiny_config()
    config["experiments"]["vtab"]["methods"] = ["lora", "no_such_method"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match=r"experiments\.vtab"):
        cost.run(argparse.Namespace(configfile=[str(path)], gpu="H100"))
    assert capsys.readouterr().out == ""


def test_the_report_sets_the_gpu_hours_spent_beside_the_estimate(tmp_path):
    """Benchmark seconds x the GPUs each job asked for, per experiment, beside the estimate (tables, then page)."""
    from test_report import render_page

    from peftstudy.report import render, tables

    config = tiny_config()
    config["resources"] = {"tune": {"gpu": 1}, "final": {"gpu": 2}, "robustness": {"gpu": 1}}
    plan = Plan.of(config)
    context = {**plan.report.report_context(), "cost": cost.report_context(plan, "X1", rates(lora=200.0, linear=100.0))}
    layout = plan.layout
    jobs = [layout.tune_benchmarks()[0], layout.final_benchmarks("vtab", "count", "lora", "abcd1234")[0]]
    jobs += layout.other_benchmarks()  # the two robustness jobs
    for job, s in zip(jobs, (3600, 1800, 360, 360), strict=True):
        bench = tmp_path / job["path"]
        job["path"] = str(bench)
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s}\t0:00:00\t100.0\t2.0\n")
    compute = tables.with_gpu_hours(tables.compute_table(jobs), context["cost"])
    assert compute["gpu_hours"].tolist() == [1.0, 1.0, 0.1, 0.1]  # tune 1 GPU, final 2, robustness 1
    experiments = tables.with_estimate(tables.experiments_table(context), context["cost"])
    estimated = {
        e.experiment: e.gpu_hours for e in cost.estimate(plan, "X1", rates(lora=200.0, linear=100.0)).experiments
    }
    assert experiments.groupby("experiment")["estimated_gpu_hours"].sum().to_dict() == pytest.approx(estimated)
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    compute.to_csv(tables_dir / "compute.csv", index=False)
    experiments.to_csv(tables_dir / "experiments.csv", index=False)
    summary = render.summary(render.load_tables(report_spec(tables_dir, tmp_path).csvs))["cost"]
    assert summary["gpu"] == "X1" and summary["spent"] == pytest.approx(2.2)
    # One row per experiment; the robustness evaluation jobs, in no experiment and no estimate, apart from them
    # (the tiny study's experiment named robustness has no job here: its tune and finals were not benchmarked).
    assert [(r["experiment"], r["jobs"], r["spent"]) for r in summary["rows"]] == [
        ("vtab", 2, pytest.approx(2.0)),
        ("robustness", 0, 0.0),
    ]
    assert summary["other"] == [
        {"what": render.OTHER_JOBS["robustness"], "jobs": 2, "spent": pytest.approx(0.2)},
    ]
    assert summary["rows"][0]["estimated"] == pytest.approx(estimated["vtab"])
    page = render_page(tables_dir, tmp_path / "report")
    assert "2.20 spent" in page and "estimated before the run on X1" in page
    cost_table = page.split('<table class="cost">')[1].split("</table>")[0]
    assert [row.split("</td>")[0] for row in cost_table.split("<tr><td>")[1:]] == ["vtab", "robustness"]
    assert "not estimated" not in page and "robustness jobs" not in page
    other = page.split('<p class="cost-other">')[1].split("</p>")[0]
    assert "in no estimate" in other and f"{render.OTHER_JOBS['robustness']}, 2 jobs, 0.20 GPU-hours spent." in other
    # Without the cost in the context (tables made before it), the tables and the page stay as they were.
    assert tables.with_gpu_hours(compute.drop(columns=["gpus", "gpu_hours"]), None).columns.tolist()[-1] == "max_rss_mb"
