"""The planning tier builds the mini and the paper studies' plans without torch, and the DAG is built without it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO, Workflow

# Builds every job's inputs and arguments of a study from the plan alone; prints the heavy modules it imported.
PLAN_EVERYTHING = """
import json, sys
import yaml
from peftstudy.plan import specs, study
from peftstudy.plan.jobs import Plan

counts = {}
for path in sys.argv[1:]:
    with open(path) as handle:
        plan = Plan.of(study.compose(yaml.safe_load(handle)))
    layout = plan.layout
    n = 0

    def first_gp(experiment, dataset, method):  # each run's first grid point, as if selected
        return next(iter(plan.grids[experiment, method]))

    for experiment, dataset, method in layout.runs():
        plan.code_digest(method)
        # Every job's spec reads back as itself: what the stage gets is what the plan made.
        packs = layout.tune_jobs[experiment, method]
        jobs = [plan.train.tune_spec(experiment, dataset, method, pack) for pack in packs]
        gp = next(iter(plan.grids[experiment, method]))
        seeds = plan.experiments[experiment]["seeds"]
        jobs += [plan.train.final_spec(experiment, dataset, method, gp, str(seed)) for seed in seeds]
        for job in jobs:
            assert specs.from_json(job.to_json()) == job, job
    for experiment in plan.experiments:
        spec = plan.selection.select_spec(experiment)
        assert specs.from_json(spec.canonical()) == spec
        for dataset in plan.experiments[experiment]["datasets"]:
            spec = plan.analysis.ensemble_spec(experiment, dataset, first_gp)
            assert specs.from_json(spec.to_json()) == spec
        n += len(plan.tune_metrics(experiment))
    jobs = [plan.train.zero_shot_head_spec(head) for head in plan.train.zero_shot_heads]
    for name, entry in plan.datasets.items():
        jobs += [plan.data.prepare_spec(name, split) for split in ("train", "val", "trainval", "test")]
        jobs += [plan.data.source_spec(name)]
        if entry["source"] == "manyshot":
            jobs += [plan.data.manyshot_lists_spec(entry["kind"], entry["subset"])]
    for job in jobs:
        assert specs.from_json(job.to_json()) == job, job
    if plan.robustness:
        for method in plan.experiments[plan.robustness["experiment"]]["methods"]:
            spec = plan.analysis.robustness_spec(method, first_gp)
            assert specs.from_json(spec.to_json()) == spec
    if "pretrain" in plan.config:
        spec = plan.train.pretrain_spec()
        assert specs.from_json(spec.to_json()) == spec
    # The tables' spec (a file: the paper's is ~600 KB), here without the finals' benchmarks (selections to come).
    spec = plan.report.tables_spec(plan.report.report_context(), [], first_gp)
    assert specs.from_json(spec.canonical()) == spec
    spec = plan.report.report_spec()
    assert specs.from_json(spec.to_json()) == spec
    counts[path] = n
heavy = sorted(m for m in ("torch", "numpy", "pandas", "timm", "snakemake") if m in sys.modules)
print(json.dumps({"tune_files": counts, "heavy": heavy}))
"""


def test_the_mini_and_paper_plans_import_no_torch():
    proc = subprocess.run(
        [sys.executable, "-c", PLAN_EVERYTHING, "config.yaml", "studies/paper.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    assert all(n > 0 for n in out["tune_files"].values())


def test_snakemake_builds_the_dag_with_torch_unimportable(workflow: Workflow):
    """A `torch` that fails on import first on the path: the dry run must never reach it."""
    (workflow.root / "no_torch").mkdir()
    (workflow.root / "no_torch/torch.py").write_text("raise ImportError('torch imported while building the DAG')\n")
    env = workflow.env
    env["PYTHONPATH"] = f"{workflow.root / 'no_torch'}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"],
        cwd=workflow.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tune" in proc.stdout + proc.stderr


def package_imports() -> dict[str, set[str]]:
    """peftstudy module -> the peftstudy modules it imports anywhere in its file (function-level imports too), but
    for those under `if TYPE_CHECKING:` (type hints only: a stage's planner names the Plan it is given)."""
    src = REPO / "src"
    modules = {
        ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (src / "peftstudy").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        tree = ast.parse(path.read_text())
        hints = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
        for hint in hints:
            hint.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_module_of_the_package_imports_itself_back():
    """One direction of imports (docs/architecture.md §2): no cycle, lazy imports included (models.clip <-> train.runs
    was one).
    A package's __init__ importing its own submodules is the package, not a cycle."""
    graph = package_imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo += [t for t in graph.get(name, ()) if not goal.startswith(f"{t}.")]
        return False

    cycles = sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if not a.startswith(f"{b}.") and not b.startswith(f"{a}.") and reaches(b, a)
    )
    assert cycles == []


def test_a_tune_job_is_a_grid_point_or_a_named_pack_and_its_file_comes_from_the_layout():
    from conftest import tiny_config

    from peftstudy.plan.jobs import Plan

    plan = Plan.of(tiny_config())
    jobs = plan.layout.tune_jobs
    # Unpacked: one job per point, named by its id; packed (runs_per_job.tune 2): its 2 points in pack1-0.
    assert {pack: gps for pack, gps in jobs["vtab", "lora"].items()} == {gp: [gp] for gp in plan.grids["vtab", "lora"]}
    ((pack, gps),) = jobs["robustness", "bitfit"].items()
    assert pack == "pack1-0" and gps == list(plan.grids["robustness", "bitfit"])
    assert f"results/tiny/robustness/shapes/bitfit/tune/{pack}/metrics.json" in plan.tune_metrics("robustness")
    assert [p.gp for p in plan.train.pack_points("robustness", "bitfit", pack)] == gps
    with pytest.raises(ValueError, match="not a grid point or pack of bitfit"):
        plan.train.pack_points("robustness", "bitfit", "pack2-1")


def test_a_backbone_fetched_as_an_archive_is_pinned_by_its_own_sum_else_the_archives():
    from peftstudy.plan.cost import load_config
    from peftstudy.plan.jobs import Plan

    config = load_config([str(REPO / "studies/robustness.yaml")])
    clip = config["backbones"]["clip"]
    archive = clip["source"]["url"].removeprefix("resources/archives/")
    config["archives"][archive]["sha256"] = "a" * 64
    plan = Plan.of(config)
    assert plan.train.fetch_backbone_inputs(clip["weights"]) == [clip["source"]["url"]]
    assert f"--sha256 {'a' * 64} " in plan.train.fetch_backbone_args(clip["weights"])
    clip["source"]["sha256"] = "b" * 64
    assert f"--sha256 {'b' * 64} " in Plan.of(config).train.fetch_backbone_args(clip["weights"])
