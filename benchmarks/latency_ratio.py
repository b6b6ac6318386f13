"""Does a latency figure carry across runs? The same file timed in five separate processes, as absolute medians
and as a ratio to baseline-float32 timed in alternating rounds (what `evaluate` reports as latency_ratio).

    make benchmark-latency   # or: python benchmarks/latency_ratio.py [FILE [REFERENCE]] [--runs 5] [--threads 1]

FILE defaults to models/tflite/baseline/baseline-int8.tflite and REFERENCE to baseline-float32 (run `make run`
first); without them, a FireNet with random weights is converted to /tmp to have something to time. Prints
every run's figures and the spread (max / min - 1) of each kind: absolute times drift with the machine's
state, the ratio should not (goal: under 10 %).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = (REPO / "models/tflite/baseline/baseline-int8.tflite",
           REPO / "models/tflite/baseline/baseline-float32.tflite")
ONE_RUN = """
import json, sys
from compresslab.tflite import timing
path, reference, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
ratio = timing.interleaved_ratio(path, reference, threads, rounds=20)
alone = timing.measure_latency(path, threads)
print(json.dumps({"ratio": ratio["ratio"], "p25": ratio["ratio_p25"], "p75": ratio["ratio_p75"],
                  "median_ms": alone["median_ms"]}))
"""


def random_firenet(folder: Path) -> tuple[Path, Path]:
    """A FireNet (64x64x3, 10 classes) with seeded random weights, as int8 and float32 files."""
    import numpy as np
    from omegaconf import OmegaConf

    import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
    from compresslab.models import zoo
    from compresslab.tflite import converter

    model = zoo.build_model(OmegaConf.create({"name": "firenet"}), (64, 64, 3), 10)
    samples = np.random.default_rng(0).random((100, 64, 64, 3), dtype=np.float32)
    files = (folder / "firenet-int8.tflite", folder / "firenet-float32.tflite")
    files[0].write_bytes(converter.convert(model, "int8", representative=samples))
    files[1].write_bytes(converter.convert(model, "float32"))
    return files


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="FILE [REFERENCE]")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path, reference = (args.files + list(DEFAULT[len(args.files):]))[:2]
        if not (path.is_file() and reference.is_file()):
            print(f"{path} or {reference} missing: timing a FireNet with random weights instead")
            path, reference = random_firenet(Path(scratch))
        print(f"{path.name} against {reference.name} at {args.threads} thread(s), {args.runs} separate processes")
        results = []
        for number in range(1, args.runs + 1):
            done = subprocess.run([sys.executable, "-c", ONE_RUN, str(path), str(reference), str(args.threads)],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            got = results[-1]
            print(f"  run {number}: ratio {got['ratio']:.3f} [IQR {got['p25']:.3f}-{got['p75']:.3f}], "
                  f"{path.name} alone {got['median_ms']:.4f} ms")
        ratios, medians = [r["ratio"] for r in results], [r["median_ms"] for r in results]
        print(f"spread over runs: ratio {spread(ratios):.1%} (goal < 10 %), absolute median {spread(medians):.1%}")


if __name__ == "__main__":
    main()
