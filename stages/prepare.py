"""Stage `prepare`: decode data/raw, resize, convert channels, split (stratified, seeded), save compact arrays.

    dvc repro prepare        # reads params: data.*, seed-independent (data.seed drives the split)

Outputs: data/prepared/{train,val,test}.npz and meta.json; class counts per split in reports/prepare/metrics.json.
"""

import compresslab  # noqa: F401  (prepares the environment before anything else is imported)
from compresslab import data, paths
from compresslab.config import load_params
from compresslab.errors import run_main
from compresslab.outputs import write_json


def run(cfg) -> dict:
    """Prepare the data set that cfg (the `data` group) describes; returns the metrics written."""
    data.validate_data_config(cfg)
    folder = data.read_image_folder(paths.RAW, cfg.image_size, cfg.channels, cfg.max_bad_share,
                                    cfg.get("max_images_per_class"))
    splits = data.split(folder, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    data.save_prepared(paths.PREPARED, splits, folder.class_names, cfg)
    counts = data.class_counts(splits, folder.class_names)
    metrics = {"images": {name: sum(c.values()) for name, c in counts.items()}, "classes": counts,
               "skipped_files": len(folder.skipped)}
    write_json(paths.stage_reports("prepare") / "metrics.json", metrics)
    print(f"prepare: {len(folder.y)} images of {len(folder.class_names)} classes -> "
          + ", ".join(f"{name} {n}" for name, n in metrics["images"].items()))
    return metrics


if __name__ == "__main__":
    run_main(lambda: run(load_params().data), skip_teardown=True)
