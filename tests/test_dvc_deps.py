"""dvc.yaml cannot let results go stale: every stage lists, as deps, each project module its script reaches
through imports, derived here from the import graph (direct imports, imports inside functions, and the
packages' `__init__` files that importing a module runs)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compresslab import variants

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# Modules that cannot change a stage's results, so editing them need not re-run it. Keep this list short.
CANNOT_CHANGE_RESULTS = {
    "src/compresslab/errors.py",    # the text of error messages and the exit codes
    "src/compresslab/tracking/mlflow_log.py",  # what is logged to MLflow, after the outputs are written
    "src/compresslab/tracking/file_models.py",  # the report's files as MLflow models, after the outputs
    "src/compresslab/tracking/lineage.py",     # the hashes tracking tags runs with
    "src/compresslab/tracking/__init__.py",    # a docstring
}


def module_file(name: str) -> Path | None:
    """The source file of a `compresslab...` module or package, None for anything else."""
    if name != "compresslab" and not name.startswith("compresslab."):
        return None
    base = SRC / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module `path` imports (`from a import b` also names a.b, which may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if not node.level else absolute(path, node.module, node.level)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def absolute(path: Path, module: str, level: int) -> str:
    """The dotted name a relative import in `path` means (`from .boxes import x` in compresslab/detection/)."""
    package = path.resolve().relative_to(SRC).with_suffix("").parts[:-1]
    return ".".join([*package[:len(package) - (level - 1)], module])


def reached_files(script: Path) -> set[str]:
    """Repository-relative paths of every compresslab source file that running `script` can execute."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            for depth in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:depth]))
                if found and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return {path.relative_to(REPO).as_posix() for path in seen}


# The pipeline files: the default pipeline, and the analyses a plain `dvc repro` leaves out (run from the root,
# `wdir: ..`, so their paths read the same).
PIPELINES = ("dvc.yaml", "analysis/dvc.yaml")


def stages() -> dict[str, dict]:
    """Every pipeline file's stages, a `foreach` stage once per item (`convert@baseline`), `${item}` substituted;
    those outside the root dvc.yaml named as DVC names them (`analysis/dvc.yaml:sensitivity`)."""
    found = {}
    for pipeline in PIPELINES:
        prefix = "" if pipeline == "dvc.yaml" else f"{pipeline}:"
        found.update({prefix + name: spec for name, spec in pipeline_stages(REPO / pipeline).items()})
    return found


def pipeline_stages(path: Path) -> dict[str, dict]:
    found = {}
    for name, spec in yaml.safe_load(path.read_text())["stages"].items():
        if "foreach" in spec:
            for item in spec["foreach"]:
                text = yaml.safe_dump(spec["do"]).replace("${item}", str(item))
                found[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            found[name] = spec
    return found


def script_of(spec: dict) -> Path:
    return REPO / spec["cmd"].split()[1]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_imports_is_one_of_its_deps(name):
    spec = stages()[name]
    deps = {entry if isinstance(entry, str) else next(iter(entry)) for entry in spec["deps"]}
    assert script_of(spec).relative_to(REPO).as_posix() in deps
    missing = reached_files(script_of(spec)) - deps - CANNOT_CHANGE_RESULTS
    assert not missing, f"{name}: add to its deps in dvc.yaml: {sorted(missing)}"
    unused = {d for d in deps if d.startswith("src/")} - reached_files(script_of(spec))
    assert not unused, f"{name}: not imported, remove from its deps: {sorted(unused)}"


def test_analysis_stages_run_from_the_root():
    # Their deps are checked as root-relative paths above: that holds only when DVC runs them from the root.
    analyses = {name: spec for name, spec in stages().items() if ":" in name}
    assert "analysis/dvc.yaml:sensitivity" in analyses
    assert all(spec.get("wdir") == ".." for spec in analyses.values()), analyses


PER_VARIANT = ("convert", "evaluate", "device")


def test_per_variant_stages_cover_every_variant():
    """convert, evaluate and device run for each declared variant and the report reads them all, with no list to
    keep."""
    listed = set(subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=REPO, check=True, capture_output=True,
                                text=True).stdout.split())   # as DVC resolves dvc.yaml's templates
    assert {f"{stage}@{variant}" for stage in PER_VARIANT for variant in variants.VARIANTS} <= listed
    assert not {name for name in listed if "@" in name} - {f"{stage}@{variant}" for stage in PER_VARIANT
                                                            for variant in variants.VARIANTS}
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "src/compresslab/variants.py:DECLARATIONS" in spec["vars"]
    for name in PER_VARIANT:
        assert spec["stages"][name]["foreach"] == "${DECLARATIONS}", name
    report_deps = {entry if isinstance(entry, str) else next(iter(entry)) for entry in spec["stages"]["report"]["deps"]}
    assert {"reports/evaluate", "reports/devices"} <= report_deps


def test_evaluate_reads_every_key_of_its_group_but_the_devices():
    """A board added to evaluate.devices re-runs only the device stages and the report, never this machine's
    timings; every other evaluate key (one added later too) re-runs evaluate."""
    from compresslab.settings import EvaluateConfig

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(spec["evaluate"]["do"]["params"]) == {f"evaluate.{key}" for key in EvaluateConfig.model_fields} - {
        "evaluate.name", "evaluate.devices"}
    assert "evaluate.devices" in spec["device"]["do"]["params"] and "evaluate" in spec["report"]["params"]


@pytest.mark.parametrize("variant", variants.DECLARED, ids=lambda variant: variant.name)
def test_each_declared_variant_is_made_by_its_stage_from_its_parent(variant):
    """stages and variants are paired in compresslab/variants.py, not by hand: dvc.yaml must agree with it."""
    spec = stages()[variant.stage]
    outs = {entry if isinstance(entry, str) else next(iter(entry)) for entry in spec["outs"]}
    deps = {entry if isinstance(entry, str) else next(iter(entry)) for entry in spec["deps"]}
    assert f"models/{variant.name}.keras" in outs
    assert variant.parent is None or f"models/{variant.parent}.keras" in deps
    assert script_of(spec) == REPO / "stages" / f"{variant.stage}.py"
    assert f'variants.made_by("{variant.stage}")' in script_of(spec).read_text()


def test_models_dvc_yaml_declares_every_file_the_declarations_make():
    """DVC's registry lists what the pipeline makes: models/dvc.yaml is generated from the declarations."""
    from compresslab.tools import dvc_artifacts

    modes = yaml.safe_load((REPO / "params.yaml").read_text())["convert"]["modes"]
    assert (REPO / dvc_artifacts.GENERATED).read_text() == dvc_artifacts.render(modes), \
        "models/dvc.yaml is stale: run `make params` and commit it"
    declared = yaml.safe_load((REPO / dvc_artifacts.GENERATED).read_text())["artifacts"]
    assert declared["pcqat-int8"]["path"] == "tflite/pcqat/pcqat-int8.tflite"   # relative to models/
    assert "pcqat-float32" not in declared and "pruned-float16" in declared   # QAT variants become int8 only
    assert declared["pruned-int8"]["labels"][:2] == ["pruned", "int8"]
    assert len(declared) == len(variants.DECLARED) + sum(
        len(variants.modes_of(name, modes)) for name in variants.REPORT_ORDER)


def test_the_import_graph_sees_nested_and_lazy_imports(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import compresslab\nfrom compresslab.tflite import measure\n"
                      "def later():\n    from compresslab.reporting.metrics import quality\n")
    reached = reached_files(script)
    assert {"src/compresslab/__init__.py", "src/compresslab/tflite/__init__.py", "src/compresslab/tflite/measure.py",
            "src/compresslab/tflite/runtime.py", "src/compresslab/tflite/flatbuffer.py",
            "src/compresslab/reporting/metrics.py"} <= reached


def test_dvc_reads_its_yaml_files_with_the_c_parser():
    """Every dvc command parses dvc.lock (70 KB on the default pipeline) several times, and a `dvc repro` after
    every stage: ruamel.yaml 0.19 made its C parser an optional package, without which each parse runs in pure
    Python, four times slower (pinned in pyproject.toml and requirements.lock)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None and YAML(typ="safe").Parser is CParser


if __name__ == "__main__":  # print each stage script's deps: python tests/test_dvc_deps.py stages/train.py
    for script in sys.argv[1:]:
        print(script, *sorted(reached_files(REPO / script) - CANNOT_CHANGE_RESULTS), sep="\n      - ")


def test_a_new_technique_touches_its_four_places_and_its_declaration(tmp_path):
    """The README's recipe, done to a copy: a `refine` stage making a `refined` variant from the baseline. DVC
    converts, evaluates and reports it, and the configuration reads its group, with no other file edited."""
    from conftest import copy_project, run

    root = copy_project(tmp_path / "project", preset=None)
    (root / "stages" / "refine.py").write_text((root / "stages" / "finetune.py").read_text()
                                               .replace('made_by("finetune")', 'made_by("refine")')
                                               .replace('"finetune")', '"refine")'))
    (root / "conf" / "refine").mkdir()
    (root / "conf" / "refine" / "default.yaml").write_text("name: default\nepochs: 1\nlearning_rate: 0.0001\n")
    config = root / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - finetune: default\n", "  - finetune: default\n"
                                                                         "  - refine: default\n"))
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    stanza = yaml.safe_load(yaml.safe_dump(dvc_yaml["stages"]["finetune"]).replace("finetune", "refine"))
    stanza["outs"] = ["models/refined.keras"]
    dvc_yaml["stages"]["refine"] = stanza
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    declarations = root / "src" / "compresslab" / "variants.py"
    declarations.write_text(declarations.read_text().replace(
        '    "pruned": {"stage": "prune"', '    "refined": {"stage": "refine", "parent": "baseline"},\n'
                                          '    "pruned": {"stage": "prune"'))

    changed = run(["git", "status", "--porcelain", "--untracked-files=all"], root).stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == [
        "conf/config.yaml", "conf/refine/default.yaml", "dvc.yaml", "src/compresslab/variants.py", "stages/refine.py"]

    env = {"PYTHONPATH": str(root / "src")}   # the copy's package, not the one installed from this checkout
    run(["compresslab", "params"], root, env=env)
    assert run([sys.executable, "-c", "import compresslab; from compresslab import config, settings, variants; "
                                      "print(settings.read(config.load_params(), 'refine')[0].epochs, "
                                      "variants.made_by('refine').parent, variants.REPORT_ORDER.index('refined'))"],
               root, env=env).stdout.split() == ["1", "baseline", "2"]
    listed = set(run(["dvc", "stage", "list", "--name-only"], root).stdout.split())
    assert {"refine", "convert@refined", "evaluate@refined"} <= listed
    assert "refined-int8" in yaml.safe_load((root / "models" / "dvc.yaml").read_text())["artifacts"]   # regenerated
    dag = run(["dvc", "dag", "--dot", "report"], root).stdout
    assert all(stage in dag for stage in ('"refine"', '"convert@refined"', '"evaluate@refined"'))
