"""Stage `prepare`: decode data.raw, resize, convert channels, split (stratified, seeded), write bounded shards.
Class folders for classification; a Pascal VOC or COCO folder of images and boxes for detection (data.task).

    dvc repro prepare        # reads params: data.* (data.seed drives the split)

The split is decided on file names and labels; images are then decoded and written a batch at a time, so memory
stays bounded whatever the data set's size.
Outputs: data/prepared/ (GZIP TFRecord shards of at most data.images_per_shard images per split, labels.npz and
meta.json: see compresslab.data.shards); class counts per split in reports/prepare/metrics.json.
"""

from pathlib import Path

import compresslab  # noqa: F401  (prepares the environment before anything else is imported)
from compresslab import paths, settings
from compresslab.data import prepare, prepare_detection
from compresslab.config import load_params
from compresslab.errors import run_main
from compresslab.outputs import write_json


def run(params) -> dict:
    """Prepare the data set that params.yaml's `data` group describes; returns the metrics written."""
    (cfg,) = settings.read(params, "data")
    if cfg.task == "detection":
        metrics = prepare_detection.prepare_detection(Path(cfg.raw), paths.PREPARED, cfg)
    else:
        metrics = prepare.prepare(Path(cfg.raw), paths.PREPARED, cfg)
    write_json(paths.stage_reports("prepare") / "metrics.json", metrics)
    print(f"prepare: {sum(metrics['images'].values())} images of {len(metrics['classes']['train'])} classes -> "
          + ", ".join(f"{name} {n}" for name, n in metrics["images"].items())
          + (f"; {sum(metrics['boxes'].values())} boxes, {sum(metrics['empty_images'].values())} images without "
             f"objects (kept: real negatives)" if cfg.task == "detection" else ""))
    return metrics


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
