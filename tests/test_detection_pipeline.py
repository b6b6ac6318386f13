"""End to end: the real `dvc repro` of the detection task on a tiny copy of the project (the `detection_smoke`
preset on a small digits-on-photos VOC folder): every stage, every technique, LiteRT evaluation with COCO mAP,
the report with its intervals, per-class table and pictures, and the MLflow summary.
"""

import mlflow
import numpy as np
import pandas as pd
import pytest

from compresslab import variants
from compresslab.data import shards
from compresslab.tools import sandbox
from conftest import REPO, mlflow_runs, read_json, run, stages_ran

pytestmark = pytest.mark.slow(minutes=9)   # about 8 minutes of one core: 8 variants, 4 QAT conversions

SERVED_IMAGES = 4   # test images the registered detector answers, against what `evaluate` found
FILES = sorted([f"{v}-{m}" for v in variants.FLOAT_VARIANTS for m in ("float32", "int8")]
               + [f"{v}-int8" for v in variants.QAT_VARIANTS])


@pytest.fixture(scope="module")
def detection_project(tmp_path_factory):
    """A copy of the project whose default is the detection_smoke preset, on 90 canvases, run once."""
    from compresslab.data.detection_sample import write_detection_sample

    root = tmp_path_factory.mktemp("detection") / "project"
    root.mkdir()
    sandbox.copy_project(REPO, root)
    config = root / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - experiment: null", "  - experiment: detection_smoke"))
    sandbox.init_git(root)
    write_detection_sample(root / "data" / "raw_detection", images=90, size=64)
    run(["dvc", "add", "-q", "data/raw_detection"], root)
    run(["compresslab", "params"], root)
    sandbox.commit_all(root, "tiny detection project")
    result = run(["dvc", "repro"], root, timeout=1500)
    (root / "repro.log").write_text(result.stdout + result.stderr)
    return root


def test_repro_runs_every_stage_and_converts_every_detector_file(detection_project):
    ran = set(stages_ran((detection_project / "repro.log").read_text()))
    assert {"prepare", "train", "finetune", "prune", "quantize", "pqat", "cluster", "cqat", "pcqat", "report"} <= ran
    tflite = sorted(p.stem for p in (detection_project / "models" / "tflite").rglob("*.tflite"))
    assert tflite == FILES
    # the preset's quantize.calibration_batches: 2 batches of 16 set every QAT-family model's starting ranges
    log = (detection_project / "repro.log").read_text()
    for stage in ("quantize", "pqat", "cqat", "pcqat"):
        assert f"{stage}: ranges calibrated on 32 training images before fine-tuning" in log, stage
    meta = read_json(detection_project / "data/prepared/meta.json")
    assert meta["task"] == "detection" and meta["class_names"] == [str(d) for d in range(10)]


def test_every_file_is_scored_by_coco_map_with_an_interval(detection_project):
    rows = pd.read_csv(detection_project / "reports/variants.csv").set_index(["variant", "mode"])
    assert len(rows) == len(FILES) and rows["error"].isna().all()
    assert list(rows.columns[:6]) == ["file", "map", "map50", "map75", "ar100", "test_images"]
    assert ((rows["map_ci_low"] <= rows["map"]) & (rows["map"] <= rows["map_ci_high"])).all()
    assert (rows["map50"] >= rows["map"]).all() and rows["val_map"].notna().all()
    baseline = rows.loc[("baseline", "float32")]
    assert baseline["map_delta_pp"] == 0 and not baseline["significant"]
    # the float32 file decodes like its Keras model: the same boxes, so the same mAP
    assert baseline["keras_map"] == pytest.approx(baseline["map"], abs=0.01)
    assert any(column.startswith("ap50_") for column in rows.columns)
    for variant in variants.FLOAT_VARIANTS:
        assert rows.loc[(variant, "int8"), "file_bytes"] < rows.loc[(variant, "float32"), "file_bytes"] * 0.6
    assert rows.loc[("pruned", "int8"), "sparsity"] > 0.3 > rows.loc[("baseline", "int8"), "sparsity"]
    metrics = read_json(detection_project / "reports/metrics.json")
    assert set(metrics["baseline"]["float32"]) >= {"map", "map_ci_low", "map_ci_high", "val_map", "gzip_bytes"}


def test_the_report_shows_the_per_class_table_the_curves_and_the_boxes(detection_project):
    report = (detection_project / "reports/report.md").read_text()
    assert "mAP [95% CI]" in report and "Average precision per class" in report
    for picture in ("pr_curves.png", "detections.png", "tradeoff.png", "map_tradeoff.csv"):
        assert (detection_project / "reports/plots" / picture).stat().st_size > 0, picture
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], detection_project).stdout


def test_the_mlflow_summary_carries_every_files_map_and_compare_chooses_by_it(detection_project):
    summaries = [r for r in mlflow_runs(detection_project) if r.data.tags.get("task") == "detection"]
    assert summaries, "no summary run tagged task=detection"
    figures = summaries[0].data.metrics
    assert "baseline.float32.map" in figures and "qat.int8.map_ci_high" in figures and "pcqat.int8.val_map" in figures
    chosen = run(["compresslab", "compare", "--max-drop", "100"], detection_project).stdout
    assert "within 100 pp of its run's finetune-float32 mAP on the validation split" in chosen
    assert ": mAP 0." in chosen   # the chosen file's figure, named
    table = pd.read_csv(detection_project / "reports/compare/compare.csv")
    assert set(table["figure"]) == {"map"} and table["accuracy"].notna().all()


def test_the_chosen_detector_file_is_registered_by_the_same_rule(detection_project):
    from mlflow.tracking import MlflowClient

    result = run(["compresslab", "compare", "--max-drop", "100", "--register", "detector"], detection_project)
    chosen = read_json(detection_project / "reports/compare/selection.json")["chosen"]
    label = f"{chosen['variant']}-{chosen['mode']}"
    assert f"registered {label}.tflite as detector version 1" in result.stdout
    assert 'mlflow.pyfunc.load_model("models:/detector@champion")' in result.stdout
    uri = f"sqlite:///{detection_project / 'mlflow.db'}"
    client = MlflowClient(uri)
    tags = client.get_model_version_by_alias("detector", "champion").tags
    assert tags["selection.reference"] == "finetune-float32" and tags["selection.split"] == "val"
    assert tags["file"] == f"{label}.tflite"

    # The version is a model that finds, image by image, the boxes `evaluate` found with that file.
    mlflow.set_tracking_uri(uri)
    try:
        test = shards.open_split("test", detection_project / "data" / "prepared")
        images = test.take(range(SERVED_IMAGES))
        found = mlflow.pyfunc.load_model("models:/detector@champion").predict(images)
    finally:
        mlflow.set_tracking_uri(None)
    evaluated = next(row for row in read_json(detection_project / "reports/evaluate" / f"{chosen['variant']}.json")
                     ["rows"] if row["mode"] == chosen["mode"])["detections"][:SERVED_IMAGES]
    class_names = shards.load_meta(detection_project / "data" / "prepared")["class_names"]
    assert len(found) == SERVED_IMAGES
    for answer, rows in zip(found.itertuples(), evaluated):
        assert answer.class_index == [row[0] for row in rows]
        assert answer.classes == [class_names[row[0]] for row in rows]
        assert np.allclose(answer.scores, [row[1] for row in rows], atol=1e-4)
        assert np.allclose(np.reshape(answer.boxes, (-1, 4)), np.reshape([row[2:] for row in rows], (-1, 4)),
                           atol=1e-4)
