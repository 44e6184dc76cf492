"""The conda envs (envs/*.yaml) hold what the code their rules run imports.

Conda channels cannot be reached here, so the envs are not built; instead every rule's env is read, the
`peftstudy` stage its shell calls is followed through the package's imports (lazy ones included), and each
third-party import must come from a distribution the env pins (directly, or through the package's own
pinned dependencies when the env installs the package with `-e ..`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"


def requirement_name(spec: str) -> str:
    return re.split(r"[=<>!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def project_distributions(extras: set[str]) -> set[str]:
    """The package, its core dependencies and those of `extras` (which may name the package's own extras)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {requirement_name(r) for r in project["dependencies"]} | {"peftstudy"}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in project["optional-dependencies"][extra]:
            own = re.fullmatch(r"peftstudy\[([\w,]+)\]", spec)
            if own:
                todo += own[1].split(",")
            else:
                names.add(requirement_name(spec))
    return names


def env_distributions(path: Path) -> set[str]:
    env = yaml.safe_load(path.read_text())
    names: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                if spec.startswith("-e"):
                    extras = re.search(r"\[([\w,]+)\]", spec)
                    names |= project_distributions(set(extras[1].split(",")) if extras else set())
                else:
                    names.add(requirement_name(spec))
        else:
            names.add(requirement_name(dep))
    return names


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def third_party_imports(module: str) -> set[str]:
    """Top-level names of every non-stdlib import reachable from `module` inside the package."""
    seen, todo, found = set(), [module], set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree)
        if path.name == "__init__.py" and name == "peftstudy.methods":
            # The registry imports every method's settings module by file name when it is imported; its layers
            # (methods/modules/) and its model-building helpers' torch and timm only when a model is built. So a
            # stage that only reads settings (select, and through it the report) needs neither: its module-level
            # imports are what it brings, and tests/test_cli.py checks at run time that such stages load no torch.
            todo += [f"peftstudy.methods.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
            nodes = iter(tree.body)
        if name == "peftstudy.models":  # a stage that builds a model also injects a method: every method's layers
            todo += [f"peftstudy.methods.modules.{p.stem}" for p in (SRC / "peftstudy/methods/modules").glob("*.py")]
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                root = target.split(".")[0]
                if root == "peftstudy":
                    todo.append(target)
                elif root not in sys.stdlib_module_names and root != "__future__":
                    found.add(root)
    return found


def stage_modules() -> dict[str, str]:
    """`peftstudy <stage>` -> the module it runs, read from cli.py; and each spec's stage (`peftstudy run`) -> its
    target's module (plan.specs)."""
    from peftstudy.plan import specs

    text = (SRC / "peftstudy/cli.py").read_text()
    # A sub-command's own _stage, never the next one's (`run` has none: it dispatches on the spec).
    parsers = r'add_parser\(\s*"([\w-]+)"(?:(?!add_parser).)*?_stage\("([\w.]+):'
    flags = dict(re.findall(parsers, text, flags=re.S))
    return flags | {name: spec.target.partition(":")[0] for name, spec in specs.all_stages().items()}


def source_rule_stages(rule: str) -> list[str]:
    """The stages a generic data-source rule runs (workflow/rules/data.smk): those of the sources (plan.sources)
    whose job runs where Snakemake runs (rule source_local), or on the cluster (rule source)."""
    from peftstudy.plan import sources

    local = {"source": False, "source_local": True}[rule]
    return sorted({s.spec_class.stage for s in sources.SOURCES.values() if s.local == local})


def rule_envs_and_stages() -> list[tuple[str, Path, str]]:
    """(rule file, env file, stage) of every rule that names a conda env and runs a peftstudy stage. A rule that
    runs `peftstudy run` (a job given as its spec) runs the spec stage of its own name (`_` for `-`), or, a
    generic data-source rule, each of its sources' stages."""
    rules = REPO / "workflow/rules"
    # Shell commands shared by several rules live in common.smk as NAME_SHELL constants.
    shared = dict(re.findall(r'(\w+_SHELL) = \(?\s*"peftstudy ([\w-]+)', (rules / "common.smk").read_text()))
    found = []
    for smk in sorted(rules.glob("*.smk")):
        # A rule starts a line (`rule NAME:`); a docstring line may begin with the word "checkpoint".
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            stage = re.search(r'"peftstudy ([\w-]+)', block)
            constant = re.search(r"shell:\s*\n\s*(\w+_SHELL)", block)
            stage = stage[1] if stage else shared.get(constant[1]) if constant else None
            rule = re.match(r"(?:rule|checkpoint) (\w+):", block)
            stages = [stage] if stage else []
            if stage == "run" and rule:
                in_spec = "PLAN.data.source_spec" in block
                # rule manyshot_lists runs stage manyshot-lists
                stages = source_rule_stages(rule[1]) if in_spec else [rule[1].replace("_", "-")]
            if env:
                found += [(smk.name, (smk.parent / env[1]).resolve(), name) for name in stages]
    return found


def test_every_python_rule_names_an_env_and_a_stage():
    pairs = rule_envs_and_stages()
    stages = stage_modules()
    assert {"tune", "final", "prepare", "report", "generate", "index", "manyshot"} <= {stage for _, _, stage in pairs}
    assert {stage for _, _, stage in pairs} <= set(stages)


@pytest.mark.parametrize(("rule_file", "env", "stage"), rule_envs_and_stages(), ids=lambda v: str(v))
def test_the_env_holds_what_the_stage_imports(rule_file, env, stage):
    module = stage_modules()[stage]
    imports = third_party_imports(module) | third_party_imports("peftstudy.cli")
    provided = env_distributions(env)
    by_import = importlib.metadata.packages_distributions()
    missing = {
        name for name in imports if not {d.lower().replace("_", "-") for d in by_import.get(name, [name])} & provided
    }
    assert not missing, f"{env.name} (for {rule_file}: peftstudy {stage}) lacks {sorted(missing)}"


def test_the_report_env_installs_no_torch():
    assert "torch" not in env_distributions(REPO / "envs/report.yaml")
    assert "torch" in env_distributions(REPO / "envs/train.yaml")
