"""Benchmark of the default pipeline: how long it takes, and what each variant buys against the float32 baseline.

    make benchmark          # or: python benchmarks/pipeline.py [--keep DIR]

Runs in a throwaway copy of the project (the workspace is left alone) with the bundled sample data:
  1. full `dvc repro` on the default config (an empty DVC cache, so every stage runs);
  2. `dvc exp run -S prune.final_sparsity=0.8` afterwards (only prune, pqat, pcqat, convert, evaluate re-run);
then prints both wall times and their ratio, the gzip-size ratio and accuracy change of every file against
baseline-float32, and the int8 / float32 latency ratio at one thread. Figures come from reports/variants.csv.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compresslab  # noqa: F401  (prepares the environment)
import sandbox

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> float:
    """Run a command (its output to a log beside the copy); return its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    start = time.perf_counter()
    with open(cwd / ".git" / "benchmark.log", "a") as log:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed: see {cwd / '.git' / 'benchmark.log'}")
    return time.perf_counter() - start


def read_rows(root: Path) -> dict[str, dict]:
    with open(root / "reports" / "variants.csv") as handle:
        return {f"{row['variant']}-{row['mode']}": row for row in csv.DictReader(handle)}


def number(row: dict, key: str) -> float | None:
    return float(row[key]) if row.get(key) not in (None, "") else None


def print_figures(label: str, rows: dict[str, dict]) -> None:
    baseline = rows["baseline-float32"]
    print(f"\n{label}: each file against baseline-float32 "
          f"(accuracy {float(baseline['accuracy']):.4f}, gzip {int(baseline['gzip_bytes']):,} B)")
    print(f"  {'file':20} {'gzip ratio':>10} {'x smaller':>9} {'Δacc pp':>8} {'latency ratio t1':>16}")
    for name, row in rows.items():
        gzip_ratio, delta, latency = (number(row, k) for k in ("gzip_ratio", "accuracy_delta_pp", "latency_ratio"))
        print(f"  {name:20} {gzip_ratio:10.3f} {1 / gzip_ratio:8.2f}x {delta:+8.2f} {latency:16.3f}")
    float_ms = number(baseline, "latency_median_ms_t1")
    for name in sorted(n for n in rows if n.endswith("-int8")):
        print(f"  int8/float32 latency at 1 thread, {name}: "
              f"{number(rows[name], 'latency_median_ms_t1') / float_ms:.3f} "
              f"({number(rows[name], 'latency_median_ms_t1'):.4f} ms vs {float_ms:.4f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compresslab-bench-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        sandbox.copy_project(REPO, root)
        sandbox.init_git(root)
        timed([sys.executable, "-m", "compresslab.cli", "sample-data"], root)
        sandbox.commit_all(root, "benchmark copy")
        print(f"benchmark in {root} on {os.cpu_count()} CPU cores; log: {root / '.git' / 'benchmark.log'}")
        full = timed(["dvc", "repro"], root)
        print(f"full dvc repro (default config, every stage): {full:8.1f} s")
        rows = read_rows(root)
        sparse = timed(["dvc", "exp", "run", "-S", "prune.final_sparsity=0.8"], root)
        print(f"dvc exp run -S prune.final_sparsity=0.8:      {sparse:8.1f} s  "
              f"({sparse / full:.2f} of the full run)")
        print_figures("default config", rows)
        print_figures("after prune.final_sparsity=0.8", read_rows(root))


if __name__ == "__main__":
    main()
