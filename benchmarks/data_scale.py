"""Benchmark: does memory stay flat when the data set grows? Peak RSS and wall time of `prepare` and of one
`train` epoch at the bundled sample's 5,000 images and at ten times that many.

    make benchmark-data     # or: python benchmarks/data_scale.py [--scale 10] [--keep DIR]

The large data set is the sample's image folder repeated `--scale` times under new names (hard links: same
pixels, ten times the files to decode, write, stream and train on). Each run is the real stage script in a
throwaway folder with the default params (train: one epoch, no early stopping); peak RSS is the stage
process's own maximum resident set (getrusage of the waited-for child). Goal (#14): the RSS figures at 10x
differ by at most 1.3x from those at 1x, and time grows no worse than linearly (ratio <= scale).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def make_project(root: Path, raw: Path, copies: int) -> Path:
    """A folder with params.yaml and data/raw holding `copies` hard-linked copies of every sample image."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = (root / "params.yaml").read_text()
    params = params.replace("  epochs: 40\n", "  epochs: 1\n", 1).replace("  patience: 4\n", "  patience: 0\n", 1)
    (root / "params.yaml").write_text(params)
    for class_dir in sorted(p for p in raw.iterdir() if p.is_dir()):
        target = root / "data" / "raw" / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.iterdir()):
            for copy in range(copies):
                link = target / f"{image.stem}-{copy}{image.suffix}"
                try:
                    os.link(image, link)
                except OSError:  # another file system: a real copy
                    shutil.copy(image, link)
    return root


def run_stage(root: Path, stage: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one stage script run in `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DVC_ROOT=str(root),
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, str(REPO / "stages" / f"{stage}.py")],
                            cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{stage} failed in {root}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=10, help="how many times the sample the large set holds")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    raw = REPO / "data" / "raw"
    if not raw.is_dir():
        sys.exit("data/raw is missing: run `make data` (or `compresslab sample-data`) first")
    base = args.keep or Path(tempfile.mkdtemp(prefix="compresslab-data-scale-"))
    figures = {}
    try:
        for copies in (1, args.scale):
            root = make_project(base / f"x{copies}", raw, copies)
            images = sum(1 for _ in (root / "data" / "raw").rglob("*.png"))
            for stage in ("prepare", "train"):
                seconds, rss = run_stage(root, stage)
                figures[stage, copies] = (seconds, rss)
                print(f"{stage:8s} {images:7,d} images: {seconds:6.1f} s, peak RSS {rss:7.1f} MB", flush=True)
            shards = sorted((root / "data" / "prepared").glob("*.tfrecord.gz"))
            print(f"         {len(shards)} shards, {sum(p.stat().st_size for p in shards) / 2**20:.1f} MB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nat {args.scale}x the images (goal: RSS ratio <= 1.3, time ratio <= {args.scale}):")
    for stage in ("prepare", "train"):
        (t1, m1), (tn, mn) = figures[stage, 1], figures[stage, args.scale]
        print(f"  {stage:8s} peak RSS {m1:7.1f} -> {mn:7.1f} MB ({mn / m1:.2f}x); "
              f"time {t1:6.1f} -> {tn:6.1f} s ({tn / t1:.1f}x)")


if __name__ == "__main__":
    main()
