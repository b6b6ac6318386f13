"""The `compresslab` command: project chores that are not DVC stages.

    compresslab sample-data        # write the bundled MNIST sample into data/raw (what data.dvc records)
    compresslab params [-S k=v]    # compose conf/ into params.yaml exactly as `dvc exp run` does
"""

import argparse
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


def params(args: argparse.Namespace) -> None:
    # DVC's own composition function, so the file is byte-for-byte what `dvc exp run` would write.
    from dvc.utils.hydra import compose_and_dump

    root = Path.cwd()
    if not (root / "conf" / "config.yaml").is_file():
        raise UserError("conf/config.yaml not found: run from the project root")
    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), args.set or [])
    print("wrote params.yaml from conf/" + (f" with {args.set}" if args.set else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compresslab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("sample-data", help="write the bundled MNIST sample into data/raw")
    command.add_argument("--out", default="data/raw")
    command.set_defaults(func=sample_data)
    command = commands.add_parser("params", help="compose conf/ into params.yaml as dvc exp run does")
    command.add_argument("-S", "--set", action="append", help="a Hydra override, e.g. prune=constant")
    command.set_defaults(func=params)
    args = parser.parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
