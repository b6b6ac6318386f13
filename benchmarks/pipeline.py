"""Benchmark of the default pipeline: how long it takes, where the time goes, and what each file buys.

    make benchmark          # or: python benchmarks/pipeline.py [--keep DIR] [--skip-smoke]

Runs in a throwaway copy of the project (the workspace is left alone) with the bundled sample data:
  1. full `dvc repro` on the default config (an empty DVC cache, so every stage runs);
  2. `dvc exp run -S prune.final_sparsity=0.8` afterwards (only prune, pqat, pcqat and their files re-run);
  3. `dvc exp run -S experiment=smoke` from an empty cache in a second copy (the quick preset);
then prints the wall times and the re-run's ratio, each stage's time split into start-up (Python and the
imports of its script, measured alone) and work, and every file's figures from reports/variants.csv.
"""

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compresslab.tools import sandbox  # a throwaway copy of the project, as the end-to-end tests make

REPO = Path(__file__).resolve().parents[1]

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def timed(command: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run a command, its output to a log in the copy; returns its wall time and the seconds each DVC stage
    took (from its "Running stage" line to the next one, DVC's own bookkeeping included)."""
    stages, current, started = {}, None, time.perf_counter()
    with open(cwd / ".git" / "benchmark.log", "a") as log:
        process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if match := STAGE_LINE.match(line):
                now = time.perf_counter()
                if current:
                    stages[current] = now - stages[current]
                current, stages[match.group(1)] = match.group(1), now
        process.wait()
    wall = time.perf_counter() - started
    if current:
        stages[current] = started + wall - stages[current]
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed: see {cwd / '.git' / 'benchmark.log'}")
    return wall, stages


def startup_seconds(root: Path, script: str, repeats: int = 3) -> float:
    """Median seconds for a fresh Python to import what `script` imports at module level (no work)."""
    code = f"import runpy; runpy.run_path({script!r})"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=root, env=environment(), check=True,
                       capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def copy(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sandbox.copy_project(REPO, root)
    sandbox.init_git(root)
    subprocess.run([sys.executable, "-m", "compresslab.cli", "sample-data"], cwd=root, env=environment(),
                   check=True, capture_output=True)
    sandbox.commit_all(root, "benchmark copy")
    return root


def print_stages(root: Path, stages: dict[str, float]) -> None:
    startup = {}
    print(f"\n  {'stage':22} {'seconds':>8} {'start-up':>9} {'work+DVC':>9}")
    for name, seconds in stages.items():
        script = f"stages/{name.split('@')[0]}.py"
        if script not in startup:
            startup[script] = startup_seconds(root, script)
        print(f"  {name:22} {seconds:8.1f} {startup[script]:9.1f} {seconds - startup[script]:9.1f}")
    total_startup = sum(startup[f"stages/{name.split('@')[0]}.py"] for name in stages)
    print(f"  {'all stages':22} {sum(stages.values()):8.1f} {total_startup:9.1f} "
          f"{sum(stages.values()) - total_startup:9.1f}")


def read_rows(root: Path) -> dict[str, dict]:
    with open(root / "reports" / "variants.csv") as handle:
        return {f"{row['variant']}-{row['mode']}": row for row in csv.DictReader(handle)}


def number(row: dict, key: str) -> float | None:
    return float(row[key]) if row.get(key) not in (None, "") else None


def print_figures(label: str, rows: dict[str, dict]) -> None:
    baseline = rows["baseline-float32"]
    print(f"\n{label}: each file against baseline-float32 (accuracy {float(baseline['accuracy']):.4f} on "
          f"{baseline['test_images']} test images, gzip {int(baseline['gzip_bytes']):,} B)")
    print(f"  {'file':20} {'gzip ratio':>10} {'x smaller':>9} {'Δ base pp':>9} {'p':>6} {'Δ ctrl pp':>9} "
          f"{'latency ratio t1':>16}")
    for name, row in rows.items():
        if row.get("error"):
            print(f"  {name:20} FAILED: {row['error']}")
            continue
        gzip_ratio, delta, p_value, control, latency = (number(row, k) for k in (
            "gzip_ratio", "accuracy_delta_pp", "p_value", "accuracy_delta_control_pp", "latency_ratio"))
        control_text = f"{control:+9.2f}" if control is not None else f"{'—':>9}"
        print(f"  {name:20} {gzip_ratio:10.3f} {1 / gzip_ratio:8.2f}x {delta:+9.2f} {p_value:6.3f} {control_text} "
              f"{latency:16.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--skip-smoke", action="store_true", help="leave out the smoke preset's run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compresslab-bench-") as scratch:
        base = args.keep or Path(scratch)
        root = copy(base / "default")
        print(f"benchmark in {root} on {os.cpu_count()} CPU cores; log: {root / '.git' / 'benchmark.log'}")
        full, stages = timed(["dvc", "repro"], root)
        print(f"full dvc repro (default config, every stage): {full:7.1f} s")
        print_stages(root, stages)
        rows = read_rows(root)
        sparse, sparse_stages = timed(["dvc", "exp", "run", "-S", "prune.final_sparsity=0.8"], root)
        print(f"\ndvc exp run -S prune.final_sparsity=0.8:      {sparse:7.1f} s  ({sparse / full:.2f} of the full "
              f"run; re-ran {', '.join(sparse_stages)})")
        if not args.skip_smoke:
            smoke_root = copy(base / "smoke")
            smoke, _ = timed(["dvc", "exp", "run", "-S", "experiment=smoke"], smoke_root)
            print(f"dvc exp run -S experiment=smoke (empty cache): {smoke:7.1f} s")
        print_figures("default config", rows)
        print_figures("after prune.final_sparsity=0.8", read_rows(root))


if __name__ == "__main__":
    main()
