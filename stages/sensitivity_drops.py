"""Stage `sensitivity_drops` (analysis/dvc.yaml, run by `make sensitivity` after `sensitivity`): every file that
loses significantly against the float control (reports/variants.csv), beside what each layer's int8 range costs
alone (reports/sensitivity/layers.json), in reports/sensitivity/drops.md.

    dvc repro analysis/dvc.yaml      # or `make sensitivity`: the per-layer measurement, then this

Its own stage so that a new report (new latencies, every run) re-writes this page in a moment, without
measuring every layer again. No TensorFlow.
"""

import json

import compresslab  # noqa: F401  (prepares the environment)
from compresslab import paths
from compresslab.errors import UserError, run_main
from compresslab.outputs import write_text
from compresslab.reporting import sensitivity_files


def run() -> str:
    folder = paths.stage_reports("sensitivity")
    needed = {"layers": folder / "layers.json", "variants": paths.REPORTS / "variants.csv"}
    for name, path in needed.items():
        if not path.is_file():
            raise UserError(f"{path} not found: run `dvc repro analysis/dvc.yaml` (it runs the pipeline and the "
                            f"sensitivity stage first)")
    text = sensitivity_files.drops_markdown(json.loads(needed["layers"].read_text()), needed["variants"].read_text())
    write_text(folder / "drops.md", text)
    print(f"sensitivity_drops: wrote {folder / 'drops.md'}")
    return text


if __name__ == "__main__":
    run_main(run)
