"""The house plan holds: three layers with no upward import, and facts declared once.

Layers, bottom to top: the kernel (``fitsense/``: records, plan, constraints,
catalogue, config, runs, ...), the stages in pipeline order (``Data-Pipeline/``,
``training/``, ``evaluation/``, ``registry/``), and the app layer (``app/``).
A module may import its own layer and the layers below; a stage may import an
upstream stage (evaluation loads the trained student), never a downstream one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from fitsense.app.dvcfile import render_dvc_yaml
from fitsense.app.pipeline import STAGE_NAMES, STAGES

REPO = Path(__file__).resolve().parent.parent
# folder -> (package, rank); a module may import packages of equal or lower rank.
LAYERS = {
    "fitsense": ("fitsense", 0),
    "Data-Pipeline": ("fitsense.data", 1),
    "training": ("fitsense.training", 2),
    "evaluation": ("fitsense.evaluation", 3),
    "registry": ("fitsense.registry", 4),
    "app": ("fitsense.app", 5),
}


def _rank(module: str) -> int | None:
    best = None
    for package, rank in LAYERS.values():
        if (module == package or module.startswith(package + ".")) and (best is None or rank > best[1]):
            best = (package, rank)
    return best[1] if best else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for folder, (_, rank) in LAYERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            for lineno, module in _imports(path):
                target = _rank(module)
                # "from fitsense import data" names a package; only real modules count.
                if target is not None and target > rank and module.count(".") > 0:
                    upward.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    assert not upward, "\n".join(upward)


def test_the_dag_and_the_stage_modules_import_nothing_from_the_app_layer_but_its_glue():
    dag = REPO / "dags" / "fitsense_distillation.py"
    modules = {m for _, m in _imports(dag) if m.startswith("fitsense")}
    assert modules <= {"fitsense.app.pipeline", "fitsense.app.pipeline.STAGE_NAMES", "fitsense.app.orchestration",
                       "fitsense.app.orchestration.run_stage_task", "fitsense.app.orchestration.capture_shard_task",
                       "fitsense.app.orchestration.merge_shards_task"}, modules


def test_dvc_yaml_is_generated_from_stages():
    assert (REPO / "dvc.yaml").read_text() == render_dvc_yaml(), "dvc.yaml drifted from STAGES: run `fitsense dvc-yaml`"
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(dvc["stages"]) == list(STAGE_NAMES)
    for stage in STAGES:
        assert dvc["stages"][stage.name]["cmd"] == f"fitsense stage {stage.name}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_declares_existing_code_and_an_importable_entry(stage):
    for path in stage.code:
        assert (REPO / path).exists(), f"{stage.name}: code path {path} does not exist"
    assert callable(stage.load())
    for dep in stage.inputs:
        assert dep.split("/")[0] in STAGE_NAMES[: STAGE_NAMES.index(stage.name)], f"{stage.name}: {dep} is not upstream"


def test_the_readme_stage_table_matches_stages():
    readme = (REPO / "README.md").read_text()
    rows = [line.split("|")[1:3] for line in readme.splitlines()
            if line.startswith("| ") and "`fitsense." in line and ":" not in line.split("|")[2]]
    table = [(name.strip(), entry.strip().strip("`")) for name, entry in rows if name.strip() in STAGE_NAMES]
    assert table == [(s.name, s.entry.replace(":", ".")) for s in STAGES]
