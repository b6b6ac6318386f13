"""Stage `evaluate`: run every .tflite file with the LiteRT interpreter and report what each one costs and buys.

    dvc repro evaluate       # reads params: evaluate (and logs the whole params.yaml to MLflow)

Outputs: reports/metrics.json (headline figures per variant and mode), reports/variants.csv (every figure,
one row per file), reports/plots/ (data for `dvc plots` and PNG images), reports/report.md, and one MLflow
summary run holding the whole configuration, every figure, and the report as artifacts.
A file that cannot be evaluated is reported and the others still are; the stage then fails at the end.
"""

import json
import os
from pathlib import Path

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import data, evaluation, report, stage, tracking, variants
from compresslab.config import load_params
from compresslab.errors import UserError, run_main
from compresslab.outputs import write_json

REPORTS = Path("reports")
PLOTS = REPORTS / "plots"
CONVERSION_FAILURES = REPORTS / "convert" / "failures.json"


def run(params) -> list[dict]:
    cfg = params.evaluate
    threads = evaluation.validate_evaluate_config(cfg)
    files = sorted(variants.TFLITE_DIR.glob("*.tflite"))
    if not files:
        raise UserError(f"no .tflite files in {variants.TFLITE_DIR}: run `dvc repro convert` first")
    meta = data.load_meta(stage.PREPARED)
    test = data.load_split(stage.PREPARED, "test")
    rows, confusions = [], {}
    for number, path in enumerate(files, 1):
        try:
            row = evaluation.evaluate_file(path, test, meta["class_names"], cfg)
        except UserError as err:
            rows.append(evaluation.error_row(path, str(err)))
            print(f"evaluate [{number}/{len(files)}] {path.name}: FAILED: {err}")
            continue
        confusions[path.stem] = {"class_names": meta["class_names"], "matrix": row.pop("confusion")}
        y_pred = row.pop("y_pred")
        if path.stem == variants.BASELINE_FILE:
            report.write_confusion_samples(test[1], y_pred, meta["class_names"], PLOTS / "confusion.csv")
        rows.append(row)
        print(f"evaluate [{number}/{len(files)}] {path.name}: accuracy {row['accuracy']:.4f}, "
              f"gzip {row['gzip_bytes']:,} B, sparsity {row['sparsity']:.3f}, "
              f"{row[f'latency_median_ms_t{threads[0]}']:.3f} ms at {threads[0]} thread(s)")
    conversion_failures = json.loads(CONVERSION_FAILURES.read_text()) if CONVERSION_FAILURES.exists() else {}
    rows += [evaluation.error_row(Path(f"{label}.tflite"), f"conversion failed: {reason}")
             for label, reason in conversion_failures.items()]
    evaluation.add_ratios(rows, threads)
    write_outputs(params, rows, confusions)
    failed = [f"{r['variant']}-{r['mode']}" for r in rows if r.get("error") and r["file"].startswith("models")]
    if failed:
        raise UserError(f"{len(failed)} file(s) could not be evaluated: {', '.join(failed)} (reasons in "
                        f"reports/report.md); the other files are reported")
    return rows


def write_outputs(params, rows: list[dict], confusions: dict) -> None:
    headline = report.headline_metrics(rows)
    write_json(REPORTS / "metrics.json", headline)
    report.write_variants_csv(rows, REPORTS / "variants.csv")
    report.write_plot_data(rows, PLOTS)
    summary = {"model": params.model.name, "data": f"{params.data.name} ({params.data.image_size}px, "
               f"{params.data.channels} channel(s))", "prune": f"{params.prune.schedule} to "
               f"{params.prune.final_sparsity or params.prune.target_sparsity} on {params.prune.layers}",
               "quantize": f"QAT on {params.quantize.layers}", "cluster": f"{params.cluster.number_of_clusters} "
               f"clusters on {params.cluster.layers}", "threads": list(params.evaluate.threads)}
    # The float32 baseline and the int8 files (what ships to a device) get a confusion heatmap each.
    shown = {label: c for label, c in confusions.items()
             if label == variants.BASELINE_FILE or label.endswith("-int8")}
    report_path = report.write_report(rows, shown, REPORTS, title="compresslab report",
                                      config_summary=summary, notes=report_notes())
    experiment = os.environ.get("DVC_EXP_NAME", "workspace")
    metrics = {f"{r['variant']}.{r['mode']}.{key}": value for r in rows if not r.get("error")
               for key, value in r.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    tracking.log_run("evaluate", params=params, metrics=metrics, run_name=f"{experiment}: {params.model.name}",
                     tags={"summary": "true", "files": str(len(rows))},
                     artifacts=[report_path, REPORTS / "variants.csv", REPORTS / "metrics.json", PLOTS,
                                "dvc.lock", "params.yaml"])


def report_notes() -> list[str]:
    return ["Latency is the median of timed single-sample runs on this machine after warm-up; it varies "
            "between machines and runs, every other figure repeats exactly.",
            "Sparsity and parameters are read back from the weights stored in each .tflite file; gzip size "
            "(level 9) shows what pruning and clustering buy on disk or over the air.",
            "Pruning shrinks files only once compressed: the zeros are still stored in the flatbuffer."]


if __name__ == "__main__":
    run_main(lambda: run(load_params()))
