"""The `compresslab` command: project chores that are not DVC stages.

    compresslab sample-data        # write the bundled MNIST sample into data/raw (what data.dvc records)
    compresslab sample-data --task detection   # the detection sample, a VOC folder, into data/raw_detection
    compresslab params [-S k=v]    # compose conf/ into params.yaml exactly as `dvc exp run` does
    compresslab compare [--max-drop PP]   # every experiment's files in one table, Pareto fronts, a choice
    compresslab search KNOB --max-drop PP # the most compressed setting of KNOB within PP of the control
    compresslab search KNOB KNOB --file F --max-drop PP   # a grid of two knobs: its Pareto front, the smallest F
    compresslab remote-check [-r NAME]    # can the shared DVC remote be reached? (before `dvc pull`)
    ... --register NAME                   # (compare, search) the chosen file into the MLflow Model Registry
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

import compresslab  # noqa: F401  (prepares the environment)
from compresslab.errors import UserError, run_main
# All light: MLflow and DVC load when a command works, not when the parser is built.
from compresslab.tools import dvc_artifacts, grid_search, registry, search as searching, search_request


# Each bundled sample: where it is written by default, the .dvc file that records its hash, what it holds.
SAMPLES = {"classification": ("data/raw", "data.dvc", "the 5,000-image MNIST sample, a folder per class"),
           "detection": ("data/raw_detection", "data_detection.dvc",
                         "MNIST digits on photo crops with exact boxes, a Pascal VOC folder")}


def sample_data(args: argparse.Namespace) -> None:
    default_out, dvc_file, _ = SAMPLES[args.task]
    out = Path(args.out or default_out)
    ours = "0123456789." if args.task == "classification" else ("JPEGImages", "Annotations", ".")
    if out.exists() and any(not p.name.startswith(tuple(ours)) for p in out.iterdir()):
        raise UserError(f"{out} already holds other data: move it away or pass --out to write the sample "
                        f"elsewhere")
    if args.task == "classification":
        from compresslab.data.sample import write_mnist_sample

        count = write_mnist_sample(out)
    else:
        from compresslab.data.detection_sample import write_detection_sample

        count = write_detection_sample(out)
    print(f"wrote {count} sample images to {out}")
    if out.resolve() == Path(default_out).resolve() and Path(dvc_file).is_file():
        cache_sample(out, dvc_file)


def cache_sample(out: Path, dvc_file: str = "data.dvc") -> None:
    """Check the written sample against its .dvc file, then put it in DVC's cache so `dvc status` is clean.

    A fresh clone has an empty cache: DVC would report the folder "not in cache" although its hash matches.
    """
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run(dvc + ["status", "--json", dvc_file], capture_output=True, text=True)
    if status.returncode != 0:
        raise UserError(f"`dvc status {dvc_file}` failed: {status.stderr.strip().splitlines()[-1:]}")
    changes = json.loads(status.stdout or "{}").get(dvc_file, [])
    states = {state for change in changes for state in change.get("changed outs", {}).values()}
    if states - {"not in cache"}:
        raise UserError(f"the sample written to {out} does not match the hash in {dvc_file} ({states}): check "
                        f"that the pinned Pillow, mlxtend and scikit-learn are installed (make setup)")
    if states:
        subprocess.run(dvc + ["commit", "--force", "--quiet", dvc_file], check=True)
        print(f"checked the sample against {dvc_file} and cached it: `dvc status` is clean")


def params(args: argparse.Namespace) -> None:
    # DVC's own composition function, so the file is byte-for-byte what `dvc exp run` would write.
    from dvc.utils.hydra import compose_and_dump

    root = Path.cwd()
    if not (root / "conf" / "config.yaml").is_file():
        raise UserError("conf/config.yaml not found: run from the project root")
    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), args.set or [])
    print("wrote params.yaml from conf/" + (f" with {args.set}" if args.set else ""))
    modes = yaml.safe_load((root / "params.yaml").read_text())["convert"]["modes"]
    if dvc_artifacts.write(root, modes):
        print(f"wrote {dvc_artifacts.GENERATED} from the variants declared in src/compresslab/variants.py")


def compare(args: argparse.Namespace) -> None:
    # Imported here: MLflow, pandas and matplotlib would slow every other sub-command down.
    from compresslab.tools.compare import compare as run_compare, summary_lines

    if args.objective is not None and args.max_drop is None:
        raise UserError("--objective only steers the choice: pass --max-drop POINTS with it")
    if args.register is not None:
        if args.max_drop is None:
            raise UserError("--register stores the chosen file: pass --max-drop POINTS to choose one")
        registry.check_name(args.register, args.alias)
    objective = args.objective or "size"
    result = run_compare(args.experiments, out=args.out, max_drop=args.max_drop, objective=objective,
                         device=args.device)
    print("\n".join(summary_lines(result)))
    if args.register is not None:
        selection = result.selection
        chosen = selection.chosen
        # A seed group's row names all its runs: the file registered is its first seed's.
        registered = registry.register(
            args.register, run_id=chosen["run_id"].split(",")[0], variant=chosen["variant"], mode=chosen["mode"],
            figures=chosen, objective=objective, alias=args.alias,
            rule={"command": "compare", "max_drop_pp": args.max_drop, "reference": selection.drop.reference,
                  "split": selection.drop.split, "rule": selection.rule,
                  "experiments": ",".join(result.experiments), **({"device": args.device} if args.device else {})})
        print(registered_line(registered))
        print(dvc_artifacts.declare_chosen(Path.cwd(), registered))


def search(args: argparse.Namespace) -> None:
    if args.register is not None:
        registry.check_name(args.register, args.alias)
    if len(args.knobs) == 1:
        if args.range:
            raise UserError("--range is for two knobs: give one knob's range with --low, --high and --resolution")
        request = search_request.plan(args.knobs[0], max_drop=args.max_drop, file=args.file, low=args.low,
                                     high=args.high, resolution=args.resolution, direction=args.direction,
                                     max_probes=args.max_probes or 8, jobs=args.jobs, overrides=args.set or (),
                                     out=args.out)
        found = searching.run(request)
        print("\n".join(searching.summary_lines(found)))
    else:
        given = [flag for flag, value in (("--low", args.low), ("--high", args.high),
                                          ("--resolution", args.resolution), ("--direction", args.direction))
                 if value is not None]
        if given:
            raise UserError(f"{given[0]} is for one knob: give each of two knobs its range with "
                            f"--range KNOB=LOW:HIGH:STEP")
        request = search_request.plan_grid(args.knobs, max_drop=args.max_drop, file=args.file,
                                          ranges=args.range or (), max_probes=args.max_probes or 16,
                                          jobs=args.jobs, overrides=args.set or (), out=args.out)
        found = grid_search.run(request)
        print("\n".join(grid_search.summary_lines(found)))
    if args.register is not None:
        chosen = found.chosen
        what = f"most compressed {request.knob_names}" if len(args.knobs) == 1 else \
            f"smallest file over the grid {request.knob_names}"
        if chosen.run_id is None:
            raise UserError(f"{request.setting_text(chosen.value)} is the committed configuration and this MLflow "
                            f"store holds no summary run of it: run `dvc repro -f -s report` to log one, then "
                            f"repeat this search (its probes are cached)")
        registered = registry.register(
            args.register, run_id=chosen.run_id, variant=request.variant, mode=request.file.rpartition("-")[2],
            figures={"accuracy": chosen.accuracy, "accuracy_delta_pp": -chosen.test_drop_pp,
                     "val_accuracy": chosen.decision_accuracy, "gzip_bytes": chosen.gzip_bytes}, alias=args.alias,
            rule={"command": "search", "knob": request.knob_names, "value": request.setting_text(chosen.value),
                  "max_drop_pp": request.max_drop, "reference": chosen.reference, "split": chosen.split,
                  "rule": f"the {what} keeping {request.file} within {request.max_drop:g} pp of "
                          f"{chosen.reference} on the {chosen.split} split"})
        print(registered_line(registered))
        print(dvc_artifacts.declare_chosen(Path.cwd(), registered))


def registered_line(registered) -> str:
    return (f"registered {registered.file} as {registered.name} version {registered.version}; "
            f"{registered.why}; load it with {registered.how_to_load()}")


def add_register_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--register", metavar="NAME", help="register the chosen .tflite file as a new version "
                         "of model NAME in the MLflow Model Registry")
    command.add_argument("--alias", default=registry.DEFAULT_ALIAS, help="the alias a better choice moves "
                         f"(default: {registry.DEFAULT_ALIAS})")


def remote_check(args: argparse.Namespace) -> None:
    from compresslab.tools.remote import check_remote

    print(check_remote(args.remote))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compresslab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("sample-data", help="write a bundled sample data set: "
                                  + "; ".join(f"{task}: {what} into {out}" for task, (out, _, what) in SAMPLES.items()))
    command.add_argument("--task", choices=tuple(SAMPLES), default="classification")
    command.add_argument("--out", default=None, help="the folder to write (default: the task's, tracked by DVC)")
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
                         help="choose the smallest (see --objective) file whose validation accuracy is at most "
                         "POINTS percentage points below that of its own run's float control, finetune-float32 "
                         "(baseline-float32 in a run without a control; the test split only for runs logged "
                         "without validation figures, as the output then says); the same rule as search "
                         "--max-drop. Prints the file's held-out test accuracy beside the choice, and why every "
                         "other file lost")
    command.add_argument("--objective", choices=["size", "latency"],
                         help="what the choice minimises: gzipped size (default) or the latency ratio to its "
                         "run's baseline-float32, timed interleaved in one process (median milliseconds only "
                         "when no run has a ratio, as the output then says)")
    command.add_argument("--device", metavar="NAME", help="latency as timed on this board of evaluate.devices "
                         "(the table, the plot and --objective latency); runs that timed nothing there are left out")
    add_register_options(command)
    command.set_defaults(func=compare)
    command = commands.add_parser("search", help="find the most compressed setting of a knob (or the smallest "
                                  "file over a grid of two) whose file stays within a drop, probing through DVC "
                                  "experiments")
    command.add_argument("knobs", nargs="+", metavar="KNOB", help="the parameter to search: "
                         + ", ".join(search_request.KNOBS) + ", or any numeric key of params.yaml with --direction, "
                         "--low, --high, --resolution and --file; or two of the known knobs for a grid (with --file "
                         "and --range)")
    command.add_argument("--max-drop", type=float, required=True, metavar="POINTS",
                         help="the largest accuracy drop allowed: the file's validation accuracy at most POINTS "
                         "percentage points below that of its run's float control, finetune-float32 "
                         "(baseline-float32 when there is none; the test split only for experiments without "
                         "validation figures, as the output then says); the same rule as compare --max-drop. "
                         "The held-out test accuracy is printed beside each probe")
    command.add_argument("--file", help="the file whose accuracy counts, <variant>-<mode> (default: the knob's "
                         "technique's int8 file, e.g. pruned-int8)")
    command.add_argument("--low", type=float, help="the least value searched (default: per knob)")
    command.add_argument("--high", type=float, help="the largest value searched (default: per knob)")
    command.add_argument("--resolution", type=float, help="the grid step: the answer is exact to it")
    command.add_argument("--direction", choices=["higher", "lower"],
                         help="for a knob not built in: which values compress more")
    command.add_argument("--range", action="append", metavar="KNOB=LOW:HIGH:STEP", help="two knobs: one knob's "
                         "range and step (repeatable; default: the knob's own)")
    command.add_argument("--max-probes", type=int, help="the most experiments run (default: 8; for two knobs 16, "
                         "and the grid must fit)")
    command.add_argument("-j", "--jobs", type=int, default=1, help="probes run at once by the DVC queue's "
                         "workers (default: 1)")
    command.add_argument("-S", "--set", action="append", metavar="KEY=VALUE", help="an override every probe "
                         "gets too, e.g. -S experiment=firenet_study (repeatable)")
    command.add_argument("--out", default="reports/search", help="folder for <knob>.json and <knob>.png "
                         "(<knob>+<knob>.* for two)")
    add_register_options(command)
    command.set_defaults(func=search)
    command = commands.add_parser("remote-check", help="check that a DVC remote exists and answers (run it "
                                  "before `dvc pull`)")
    command.add_argument("-r", "--remote", help="the remote's name (default: the default remote)")
    command.set_defaults(func=remote_check)
    args = parser.parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
