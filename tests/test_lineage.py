"""Lineage: a run's dvc.dep.* / dvc.out.* tags hold the hashes dvc.lock holds once its stage has finished, and
runs carry the raw data set (data.dvc) as an MLflow dataset input."""

import hashlib
import json
import sys
import textwrap

import pytest
import yaml
from mlflow.tracking import MlflowClient

from compresslab.tracking import lineage
from compresslab.tracking import mlflow_log
from conftest import run

DATA_MD5 = "c80d4a4c802818dd55c3aa6b38df342f.dir"
PREPARED_MD5 = "7446232513023e40b50045513316df7e.dir"
BASELINE = b"baseline weights \x00\x01"
PRUNED = b"pruned weights \x00\x02"

DVC_YAML = """
stages:
  prepare:
    cmd: python stages/prepare.py
    deps: [stages/prepare.py, data/raw]
    outs: [data/prepared]
  train:
    cmd: python stages/train.py
    deps: [stages/train.py, data/prepared]
    outs: [models/baseline.keras]
  prune:
    cmd: python stages/prune.py
    deps: [stages/prune.py, models/baseline.keras, data/prepared]
    outs: [models/pruned.keras]
    metrics:
      - reports/prune/metrics.json:
          cache: false
"""

# prepare and train have finished in this repro; prune's entry is from an earlier run (stale).
DVC_LOCK = f"""
schema: '2.0'
stages:
  prepare:
    cmd: python stages/prepare.py
    outs:
    - path: data/prepared
      hash: md5
      md5: {PREPARED_MD5}
  train:
    cmd: python stages/train.py
    outs:
    - path: models/baseline.keras
      hash: md5
      md5: {hashlib.md5(BASELINE).hexdigest()}
  prune:
    cmd: python stages/prune.py
    deps:
    - path: models/baseline.keras
      hash: md5
      md5: 00000000000000000000000000000000
    outs:
    - path: models/pruned.keras
      hash: md5
      md5: 11111111111111111111111111111111
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project as the prune stage sees it while running: parents locked, its own outputs just written."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {DATA_MD5}\n  size: 10\n  nfiles: 2\n  hash: md5\n"
                                       "  path: data/raw\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    for path, content in {"models/baseline.keras": BASELINE, "models/pruned.keras": PRUNED,
                          "data/prepared/train.npz": b"x", "reports/prune/metrics.json": b"{}",
                          "stages/prune.py": b"print()"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    return tmp_path


def test_a_run_carries_locked_dep_hashes_and_computed_out_hashes(project):
    run_id = mlflow_log.log_run("prune", params={"prune": {"final_sparsity": 0.5}}, metrics={"test_accuracy": 0.9})
    tags = MlflowClient(mlflow_log.tracking_uri()).get_run(run_id).data.tags
    dvc_tags = {k: v for k, v in tags.items() if k.startswith("dvc.")}
    assert dvc_tags == {
        "dvc.dep.models/baseline.keras": hashlib.md5(BASELINE).hexdigest(),  # the file, not prune's stale entry
        "dvc.dep.data/prepared": PREPARED_MD5,  # a directory: what its producer `prepare` locked
        "dvc.out.models/pruned.keras": hashlib.md5(PRUNED).hexdigest(),  # written now, not yet locked
        "dvc.out.reports/prune/metrics.json": hashlib.md5(b"{}").hexdigest(),
    }
    assert tags["data_hash"] == DATA_MD5 and tags["dvc_exp_name"] == "workspace"


def test_the_summary_run_has_the_raw_data_as_a_dataset_input(project):
    run_id = mlflow_log.log_run("evaluate", params={"evaluate": {"threads": [1]}}, metrics={"m": 1.0},
                              tags={"summary": "true"})
    inputs = MlflowClient(mlflow_log.tracking_uri()).get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("data/raw", DATA_MD5, "local")
    assert json.loads(dataset.source) == {"uri": str(project / "data" / "raw")}
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "evaluate"}


def test_a_run_outside_a_dvc_project_has_no_dvc_tags_or_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run_id = mlflow_log.log_run("prune", params={"a": 1}, metrics={"m": 2.0})
    run_ = MlflowClient(mlflow_log.tracking_uri()).get_run(run_id)
    assert run_.data.metrics == {"m": 2.0} and run_.data.tags["stage"] == "prune"
    assert not [k for k in run_.data.tags if k.startswith("dvc.") or k == "data_hash"]
    assert run_.inputs.dataset_inputs == [] and run_.info.status == "FINISHED"


def test_unknown_stage_and_odd_paths(project):
    assert lineage.stage_hashes("no_such_stage", project) == {}
    tags = {}
    lineage.add_tag(tags, lineage.OUT, "models/a b+c.keras", "abc")
    lineage.add_tag(tags, lineage.DEP, "../outside.bin", "def")  # no stable name outside the project
    lineage.add_tag(tags, lineage.DEP, "models/missing.keras", None)
    assert tags == {"dvc.out.models/a b_c.keras": "abc"}


STAGE_SCRIPT = """
import json, os, pathlib, sys
from compresslab.tracking import lineage
pathlib.Path("models").mkdir(exist_ok=True)
pathlib.Path("plots/sub").mkdir(parents=True, exist_ok=True)
pathlib.Path("models/out.bin").write_bytes(pathlib.Path("models/in.bin").read_bytes()[::-1])
pathlib.Path("plots/a.csv").write_text("x,y\\r\\n1,2\\r\\n")  # CRLF: DVC 3 hashes the bytes as they are
pathlib.Path("plots/sub/b.txt").write_text("b")
pathlib.Path("metrics.json").write_text('{"m": 1}')
pathlib.Path(os.environ["HASHES_OUT"]).write_text(json.dumps(lineage.stage_hashes("use")))
"""


def test_tags_equal_what_a_real_dvc_repro_locks(tmp_path):
    """A tiny DVC project: stage `make` writes a file and a directory, stage `use` reads them and writes a file,
    a directory and a metric; the hashes `use` takes while running equal its dvc.lock entry afterwards."""
    (tmp_path / "use.py").write_text(STAGE_SCRIPT)
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          make:
            cmd: {sys.executable} -c "import pathlib; p = pathlib.Path('data/d'); p.mkdir(parents=True); (p / 'x.bin').write_bytes(b'x' * 100); (p / 'y.txt').write_text('y'); pathlib.Path('models').mkdir(); pathlib.Path('models/in.bin').write_bytes(bytes(range(256)))"
            outs: [data/d, models/in.bin]
          use:
            cmd: {sys.executable} use.py
            deps: [use.py, data/d, models/in.bin]
            outs: [models/out.bin, plots]
            metrics:
              - metrics.json:
                  cache: false
        """))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    hashes = tmp_path / "hashes.json"  # not a declared out: DVC leaves it alone
    run([sys.executable, "-m", "dvc", "repro", "-q"], tmp_path, env={"HASHES_OUT": str(hashes)})
    locked = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["use"]
    expected = {f"dvc.{kind[:-1]}.{e['path']}": e["md5"] for kind in ("deps", "outs") for e in locked[kind]
                if not e["path"].endswith(".py")}
    assert len(expected) == 5 and expected["dvc.out.plots"].endswith(".dir")
    assert json.loads(hashes.read_text()) == expected
