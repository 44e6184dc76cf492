"""Data sources are a registry (plan.sources): a new source is its module and one registration line, and the
config's checks, the plan, the estimate and the DAG take it with no other edit."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
from conftest import copy_repo, jobs, tiny_config

from peftstudy.plan import cost, sources, specs
from peftstudy.plan.jobs import Plan
from peftstudy.plan.study import ConfigError

# A source no part of the package knows: its own spec class, one key of its own with its own check, its own
# training-set sizes; where its job runs and its resources are filled in per test.
TOY = '''"""A toy data source (tests/test_sources.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from peftstudy.plan import specs
from peftstudy.plan.sources.base import ConfigError, Source, register


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToySpec(specs.Spec):
    stage: ClassVar[str] = "toy"
    target: ClassVar[str] = "peftstudy.plan.sources.toy:run"

    shade: int
    source: str = specs.output_file()
    manifest: str = specs.output_file()


class Toy(Source):
    name = "toy"
    spec_class = ToySpec
    required = frozenset({"shade"})
    local = LOCAL
    resources: ClassVar[Mapping[str, int]] = {"mem_mb": 1234, "runtime": 7}

    def spec(self, plan: Any, dataset: str) -> ToySpec:
        source, manifest = plan.layout.data_file(dataset, "source"), plan.layout.manifest(dataset)
        return ToySpec(shade=plan.datasets[dataset]["shade"], source=source, manifest=manifest)

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        if not 0 <= entry["shade"] < 256:
            raise ConfigError(f"datasets.{name}.shade: {entry['shade']} is not a grey level; give 0 to 255")

    def train_sizes(self, config: Mapping[str, Any], dataset: str) -> tuple[int, int, str]:
        return 10, 12, "the toy's own"


register(Toy())
'''


def toy_config(**entry: object) -> dict:
    """The tiny study with its `count` task from the toy source."""
    config = tiny_config()
    config["datasets"]["count"] = {"source": "toy", "classes": 6, "shade": 7, **entry}
    return config


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy source in a module of its own, imported (which registers it) as the registry imports its modules;
    its spec class defined in a copy of the stage table and the registry restored after, so no other test sees it."""
    (tmp_path / "toy_source.py").write_text(TOY.replace("LOCAL", "True"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(specs, "STAGES", dict(specs.all_stages()))
    registered = dict(sources.SOURCES)
    try:
        yield importlib.import_module("toy_source")
    finally:
        sys.modules.pop("toy_source", None)
        sources.SOURCES.clear()
        sources.SOURCES.update(registered)


def test_a_new_source_is_checked_planned_and_estimated_with_no_other_edit(toy):
    config = toy_config()
    plan = Plan.of(config)
    spec = plan.data.source_spec("count")
    assert isinstance(spec, toy.ToySpec) and spec.shade == 7
    assert spec.outputs() == {
        "source": plan.layout.data_file("count", "source"),
        "manifest": plan.layout.manifest("count"),
    }
    assert specs.from_json(spec.to_json()) == spec  # what `peftstudy run` reads back
    # Prepare reads the source's layout folder, as for every source.
    assert plan.data.prepare_spec("count", "train").inputs()["source"] == spec.source
    assert "count" in plan.data.datasets_where(local=True) and "count" not in plan.data.datasets_where(local=False)
    # The estimate's sizes are the source's own.
    assert cost.train_sizes(config, "count") == (10, 12, "the toy's own")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"shade": 300}, "datasets.count.shade: 300 is not a grey level; give 0 to 255"),
        ({"shade": None}, None),  # the key missing: below
        ({"vtab_task": "dtd"}, "datasets.count: vtab_task belongs to another source than toy"),
        (
            {"hue": 3},
            "datasets.count: unknown key(s) hue; source toy takes shade besides cache, class_subset, classes,",
        ),
        ({"source": "toi"}, "datasets.count.source: unknown source 'toi'; known: archive, local, manual, manyshot,"),
    ],
)
def test_a_new_sources_keys_and_checks_name_the_key_and_the_fix(toy, entry, message):
    config = toy_config(**entry)
    if entry.get("shade", 0) is None:
        del config["datasets"]["count"]["shade"]
        message = "datasets.count: source toy needs shade"
    with pytest.raises(ConfigError, match=re.escape(message)):
        Plan.of(config)


@pytest.mark.parametrize("local", [True, False])
def test_a_new_source_runs_in_the_dag_by_one_registration_line(tmp_path, local):
    """A copy of the repository with the toy module added under plan/sources and imported by the registry:
    Snakemake plans its job (local, or a cluster job asking for the source's resources) and the prepare jobs after
    it, the config schema taking its key."""
    (tmp_path / "repo").mkdir()
    wf = copy_repo(tmp_path / "repo")
    package = wf.root / "src/peftstudy/plan/sources"
    (package / "toy.py").write_text(TOY.replace("LOCAL", str(local)))
    with (package / "__init__.py").open("a") as registry:
        registry.write("from peftstudy.plan.sources import toy  # noqa: E402, F401\n")
    path = wf.config(toy_config())
    target = "results/tiny/data/count/train.npz"
    out = wf.snakemake("-n", "-p", target, "--configfile", str(path)).stdout
    planned = jobs(out)
    rule = "source_local" if local else "source"
    assert (rule, {"dataset": "count"}) in planned and ("prepare", {"dataset": "count", "split": "train"}) in planned
    assert '"stage":"toy"' in out.replace("\\", "")
    if not local:
        assert re.search(r"resources: .*runtime=7, mem_mb=1234", out), out
