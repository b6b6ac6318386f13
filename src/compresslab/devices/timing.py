"""A variant's files timed on every device of evaluate.devices, as rows like the evaluate stage's.

Each device gets the variant's files, baseline-float32's file (every ratio is against it, timed on that
device in alternating rounds) and the first test image (the input the evaluate stage times with), and runs
evaluate's schedule (warm-up, timed runs, ratio rounds, peak memory) at the device's own thread counts.
"""

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compresslab import paths, variants
from compresslab.devices import remote
from compresslab.settings import EvaluateConfig

MAX_RUNS = 2000          # tflite/timing.py's measure_latency default
SAMPLE = "sample.npy"
LATENCY_FIGURES = ("median_ms", "p25_ms", "p75_ms", "p90_ms", "mean_ms", "std_ms")
RATIO_FIGURES = ("ratio", "ratio_p25", "ratio_p75")


def time_variant(cfg: EvaluateConfig, variant: str, modes: Sequence[str], reference: Path, sample,
                 *, echo: Callable[[str], None] = print) -> dict:
    """{device name: {'host', 'threads', 'fingerprint', 'seconds', 'rows': [one per file]}} for every device.

    Args:
      modes: the variant's converted modes; its files are variants' paths (tflite_file).
      reference: baseline-float32's file.
      sample: one test image, float in [0, 1].
    """
    files = {mode: paths.tflite_file(variant, mode) for mode in modes}
    upload = list(dict.fromkeys([*files.values(), reference]))
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        sample_path = Path(scratch) / SAMPLE
        np.save(sample_path, np.asarray(sample, dtype=np.float32))
        for device in cfg.devices:
            plan = {"files": [path.name for path in files.values()], "reference": reference.name,
                    "threads": list(device.threads), "warmup": cfg.warmup_runs, "min_runs": cfg.min_runs,
                    "min_seconds": cfg.min_seconds, "max_runs": MAX_RUNS, "ratio_rounds": cfg.ratio_rounds,
                    "measure_memory": cfg.measure_memory, "sample": SAMPLE}
            echo(f"device@{variant}: timing {len(files)} file(s) on {device.name} ({device.host}) at "
                 f"{', '.join(map(str, device.threads))} thread(s)")
            measured = remote.time_files(device, [*upload, sample_path], plan, echo=echo)
            results[device.name] = {
                "host": device.host, "threads": list(device.threads), "fingerprint": measured["fingerprint"],
                "seconds": measured["seconds"],
                "rows": [row(variant, mode, measured["files"][path.name]) for mode, path in files.items()]}
    return results


def row(variant: str, mode: str, figures: dict) -> dict:
    """One file's device figures under the evaluate rows' names (latency_median_ms_t1, fps_t1, ...)."""
    found = {"variant": variant, "mode": mode, "file": variants.label(variant, mode)}
    for threads, latency in figures["latency"].items():
        for key in LATENCY_FIGURES:
            found[f"latency_{key}_t{threads}"] = latency[key]
        found[f"fps_t{threads}"] = latency["fps"]
    for threads, ratio in figures["ratio"].items():
        for key in RATIO_FIGURES:
            found[f"latency_{key}_t{threads}"] = ratio[key]
    for key in ("peak_rss_mb", "model_rss_mb"):
        found[key] = figures.get(key)
    return found
