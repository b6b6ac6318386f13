"""Stage `report`: score, compare and report every evaluated file, and log the MLflow summary run.

    dvc repro report         # reads params: evaluate (and logs the whole params.yaml to MLflow)

Reads reports/evaluate/<variant>.json of every variant and the test labels; light work (no TensorFlow, no
LiteRT), so it can close every pipeline execution cheaply.
Outputs: reports/metrics.json (headline figures per variant and mode, `dvc exp show`'s columns),
reports/variants.csv (every figure, one row per file), reports/plots/ (data for `dvc plots` and PNG images),
reports/report.md, reports/fingerprint.json (the machine the files were timed on), reports/profile.json (every
file's time per operator), and the MLflow summary
(in the execution's parent run) holding the whole configuration, every figure, the report and the files.
A file that could not be produced or evaluated is reported with its reason; the stage then fails at the end.
"""

import json
from pathlib import Path

import compresslab  # noqa: F401  (prepares the environment)
from compresslab import paths, settings, variants
from compresslab.data import shards
from compresslab.tracking import file_models, mlflow_log
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.outputs import write_json
from compresslab.reporting import data_files, devices, report, scoring
from compresslab.results.headline import headline_metrics
from compresslab.results.record import Record
from compresslab.results.summary import summary_metrics


def run(params) -> list[Record]:
    (cfg,) = settings.read(params, "evaluate")
    missing = [v for v in variants.VARIANTS if not paths.evaluation(v).is_file()]
    if missing:
        raise UserError(f"no evaluation of {', '.join(missing)}: run `dvc repro` (or "
                        f"`dvc repro evaluate@{missing[0]}`) first")
    evaluations = [json.loads(paths.evaluation(v).read_text()) for v in variants.VARIANTS]
    rows = [row for evaluation in evaluations for row in evaluation["rows"]]
    fingerprint, fingerprint_notes = timing_fingerprint(evaluations)
    write_json(paths.REPORTS / "fingerprint.json", fingerprint)
    profiles = gathered(evaluations, "profiles", paths.REPORTS / "profile.json")
    allocations = gathered(evaluations, "allocations", paths.REPORTS / "allocation.json")
    tensor_errors = gathered(evaluations, "tensor_errors", paths.REPORTS / "tensor_error.json")
    device_timings = devices.read_timings(variants.VARIANTS)   # the boards of evaluate.devices (device@<variant>)
    # The task's own scoring and report; the frame around them (timing, profiles, failures) is shared.
    report_task = detection_report if shards.load_meta().get("task") == "detection" else classification_report
    records = report_task(params, cfg, rows, fingerprint, fingerprint_notes, profiles,
                          {"allocations": allocations, "tensor_errors": tensor_errors}, device_timings)
    failed = [record.label for record in records if record.failed]
    if failed:
        raise UserError(f"{len(failed)} file(s) could not be evaluated: {', '.join(failed)} (reasons in "
                        f"reports/report.md); the other files are reported")
    return records


def gathered(evaluations: list[dict], key: str, path: Path) -> dict:
    """Every variant's `key` section ({file label: figures}) in one mapping, written to `path`."""
    found = {name: value for evaluation in evaluations for name, value in evaluation.get(key, {}).items()}
    write_json(path, found)
    return found


def classification_report(params, cfg, rows: list[dict], fingerprint: dict, fingerprint_notes: list[str],
                          profiles: dict, quantization: dict, device_timings: dict) -> list[Record]:
    """Accuracy with Wilson intervals and McNemar tests, the confusion matrices, report.md and the summary."""
    meta = shards.load_meta()
    y_true = shards.load_labels("test")
    predictions = scoring.take_predictions(rows)
    confusions = scoring.score_rows(rows, predictions, y_true, meta["class_names"], cfg.positive_class,
                                    latency_threads=cfg.threads[0])
    notes = scoring.uncertainty_notes(rows) + scoring.latency_notes(rows, cfg.threads[0]) + fingerprint_notes
    for note in notes:
        print(f"report: {note}")
    if variants.BASELINE_FILE in predictions:  # DVC's confusion plot reads one line per test image
        data_files.write_confusion_samples(y_true, predictions[variants.BASELINE_FILE], meta["class_names"],
                                           paths.PLOTS / "confusion.csv")
    records = [Record.from_row(row) for row in rows]
    write_outputs(params, records, confusions, notes, fingerprint, profiles, quantization, device_timings)
    return records


def detection_report(params, cfg, rows: list[dict], fingerprint: dict, fingerprint_notes: list[str],
                     profiles: dict, quantization: dict, device_timings: dict) -> list[Record]:
    """COCO scores with bootstrap intervals and paired changes, per-class AP, PR curves, the boxes drawn on test
    images; the same metrics.json, variants.csv and MLflow summary as a classification study."""
    from compresslab.reporting import detection_report as markdown, detection_scoring  # noqa: PLC0415

    test = shards.open_split("test")
    detections = detection_scoring.take_detections(rows)
    scored = detection_scoring.score_rows(rows, detections, test.ground_truth(), test.meta["class_names"],
                                          test.meta["image_size"], score_threshold=cfg.score_threshold,
                                          samples=cfg.bootstrap_samples, latency_threads=cfg.threads[0])
    notes = detection_scoring.uncertainty_notes(rows) + scoring.latency_notes(rows, cfg.threads[0]) + \
        fingerprint_notes
    for note in notes:
        print(f"report: {note}")
    records = [Record.from_row(row) for row in rows]
    images = markdown.first_images(test, PICTURE_IMAGES)
    pictures = {"images": images, "ground_truth": test.ground_truth()[:len(images)],
                "detections": {name: found[:len(images)]
                               for name, found in markdown.picture_files(rows, scored, detections).items()},
                "class_names": test.meta["class_names"], "score_threshold": cfg.score_threshold}
    write_json(paths.REPORTS / "metrics.json", headline_metrics(records))
    data_files.write_variants_csv(records, paths.REPORTS / "variants.csv")
    encoded = [record.to_row() for record in records]
    data_files.write_plot_data(encoded, paths.PLOTS)
    summary = {**study_summary(params, fingerprint), "data": f"{params.data.name} ({params.data.image_size}px, "
               f"{len(test.meta['class_names'])} classes, {len(test)} test images)"}
    report_path = markdown.write_report(encoded, scored, pictures, paths.REPORTS, title="compresslab report "
                                        "(detection)", config_summary=summary, notes=notes + report_notes())
    log_summary(params, records, report_path, fingerprint, len(encoded), device_timings)
    return records


PICTURE_IMAGES = 6   # test images in the report's grid of boxes


def timing_fingerprint(evaluations: list[dict]) -> tuple[dict, list[str]]:
    """The machine the files were timed on, and a note when the variants were timed on different ones (a
    shared DVC cache can bring evaluations from elsewhere): then only the latency ratios compare."""
    found = [e["fingerprint"] for e in evaluations if e.get("fingerprint")]
    if not found:
        return {}, []
    differing = sorted({key for f in found for key in f if len({g.get(key) for g in found}) > 1})
    if not differing:
        return found[0], []
    return found[0], [f"The files were timed on different machines or software ({', '.join(differing)} differ): "
                      f"compare their latency ratios to baseline-float32, not milliseconds."]


def write_outputs(params, records: list[Record], confusions: dict, notes: list[str], fingerprint: dict,
                  profiles: dict, quantization: dict | None = None, device_timings: dict | None = None) -> None:
    """`quantization`: {'allocations': the mixed files' allocations, 'tensor_errors': per-tensor errors};
    `device_timings`: {device: its timings} (`reporting.devices`)."""
    write_json(paths.REPORTS / "metrics.json", headline_metrics(records))
    data_files.write_variants_csv(records, paths.REPORTS / "variants.csv")
    rows = [record.to_row() for record in records]
    data_files.write_plot_data(rows, paths.PLOTS)
    summary = study_summary(params, fingerprint)
    # The float32 baseline and the int8 files (what ships to a device) get a confusion heatmap each.
    shown = {name: c for name, c in confusions.items() if name == variants.BASELINE_FILE or name.endswith("-int8")}
    report_path = report.write_report(rows, shown, paths.REPORTS, title="compresslab report",
                                      config_summary=summary, notes=notes + report_notes(), profiles=profiles,
                                      device_timings=device_timings, **(quantization or {}))
    log_summary(params, records, report_path, fingerprint, len(rows), device_timings or {})


def study_summary(params, fingerprint: dict) -> dict:
    """The configuration worth stating at the top of report.md."""
    return {"model": params.model.name, "data": f"{params.data.name} ({params.data.image_size}px, "
            f"{params.data.channels} channel(s))", "prune": settings.read(params, "prune")[0].describe(),
            "quantize": f"QAT on {params.quantize.layers}", "cluster": f"{params.cluster.number_of_clusters} "
            f"clusters on {params.cluster.layers}", "control": f"baseline fine-tuned {params.finetune.epochs} "
            f"epoch(s) at learning rate {params.finetune.learning_rate}, no compression",
            "threads": list(params.evaluate.threads),
            "timed on": ", ".join(f"{key} {value}" for key, value in fingerprint.items())}


def log_summary(params, records: list[Record], report_path, fingerprint: dict, files: int,
                device_timings: dict) -> None:
    """The MLflow summary run: the whole configuration, every figure (and every board's, as
    `<variant>.<mode>.<device>.<figure>`), the report and the files; and each file as a model of it (MLflow's
    Models tab)."""
    meta = shards.load_meta()
    run_id = mlflow_log.log_summary(
        params=params, metrics={**summary_metrics(records), **devices.device_metrics(device_timings)},
        description=report_path.read_text(),
        tags={"files": str(files), "model": params.model.name, "task": str(meta.get("task", "classification")),
              **{f"fingerprint.{key}": value for key, value in fingerprint.items()},
              **{f"device.{name}.{key}": value for name, timing in device_timings.items()
                 for key, value in timing["fingerprint"].items()}},
        artifacts=[report_path, paths.REPORTS / "variants.csv", paths.REPORTS / "metrics.json",
                   paths.REPORTS / "fingerprint.json", paths.REPORTS / "profile.json",
                   paths.REPORTS / "allocation.json", paths.REPORTS / "tensor_error.json", paths.PLOTS, paths.TFLITE,
                   *([paths.DEVICE_TIMINGS] if device_timings else []),
                   "dvc.lock", "params.yaml"])
    log_file_models(run_id, records, meta)


def log_file_models(run_id: str, records: list[Record], meta: dict) -> None:
    """Every evaluated file as a LiteRT pyfunc model of the summary run, with its figures and lineage (the files
    this workspace holds: all of them after `dvc repro`)."""
    present = [record for record in records if not record.failed and record.file and Path(record.file).is_file()]
    if not present:
        return
    test = shards.open_split("test")
    conversion = json.loads(paths.conversion_record(present[0].variant).read_text())   # a detector's anchors
    served = file_models.served_study(meta, conversion, test.take(range(min(EXAMPLE_IMAGES, shards.count(test)))))
    from mlflow.tracking import MlflowClient  # noqa: PLC0415  (loaded with mlflow_log's writes anyway)

    uri = mlflow_log.tracking_uri()
    # The lineage log_summary has just tagged the run with, read back rather than worked out again.
    lineage = {key: value for key, value in MlflowClient(uri).get_run(run_id).data.tags.items()
               if key in ("data_hash", "git_commit", "dvc_exp_name")}
    files = [file_models.FileModel(record.label, Path(record.file), file_models.figures_of(record),
                                   {"variant": record.variant, "mode": record.mode,
                                    "file_md5": shards.file_md5(Path(record.file)), **lineage},
                                   file_models.file_config(Path(record.file), served))
             for record in present]
    with mlflow_log.write_lock(uri):
        file_models.log_models(uri, run_id, files, served)
    print(f"mlflow: logged {len(files)} file(s) as models of {run_id} (the experiment's Models tab)")


# Test images logged as each file model's input example: one, since MLflow checks it by loading the model and
# predicting it, and three images made the report stage 2 s slower on the default config.
EXAMPLE_IMAGES = 1


def report_notes() -> list[str]:
    return ["Latency is the median of timed single-sample runs after warm-up, with its interquartile range; it "
            "varies between machines and runs (every other figure repeats exactly). The latency ratio ('× base') "
            "is timed against baseline-float32 in alternating rounds in the same process, so it holds across "
            "runs: compare files and experiments by it.",
            "Sparsity and parameters are read back from the weights stored in each .tflite file; gzip size "
            "(level 9) shows what pruning and clustering buy on disk or over the air.",
            "Pruning shrinks files only once compressed: the zeros are still stored in the flatbuffer."]


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
