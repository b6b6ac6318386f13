"""The pipeline's files in DVC's model registry: the `artifacts:` sections `dvc artifacts get` and Studio read.

    gto register models:pruned-int8 && dvc artifacts get . models:pruned-int8   # one converted file
    gto register firenet && dvc artifacts get . firenet          # the file `--register firenet` chose

DVC's registry is two halves: the `artifacts:` sections name and describe files, and git tags (GTO's, made by
`gto register` / `gto assign`) version them; `dvc artifacts get` fetches a tagged version from the DVC cache or
remote. This module writes the first half; tagging is a git commit's business, left to the user.

- `models/dvc.yaml` declares every file the pipeline makes: each variant's Keras model (`<variant>`) and each of
  its `.tflite` files (`<variant>-<mode>`, the label MLflow names its logged model by). It is generated from
  `variants.DECLARATIONS` and the composed `convert.modes` (`make params` rewrites it; tests/test_dvc_deps.py
  fails while it is stale), so a new variant is still declared in one place. An experiment that converts
  other modes (`dvc exp run -S convert.modes=...`) does not rewrite it: DVC reports a declared file it did
  not make as missing, by name.
- `dvc.yaml` gets the file `--register NAME` chose as artifact NAME (what DVCLive's `log_artifact` does), with the
  MLflow version it became, when the workspace holds that very file.
"""

import re
from pathlib import Path

import yaml

from compresslab import paths, variants
from compresslab.data.shards import file_md5

GENERATED = paths.MODELS / "dvc.yaml"
HEADER = ("# Written by `compresslab params` (make params) from DECLARATIONS in src/compresslab/variants.py: "
          "do not edit.\n"
          "# Every file the pipeline makes, for `dvc artifacts get . models:<name>` (see tools/dvc_artifacts.py).\n")


def declared(modes) -> dict[str, dict]:
    """The artifacts of models/dvc.yaml for the configured `convert.modes`, paths relative to models/."""
    found = {}
    for variant in variants.DECLARED:
        lineage = f"made by stage {variant.stage}" + (f" from {variant.parent}" if variant.parent else "")
        kind = "qat" if variant.qat else "float"
        found[variant.name] = {
            "path": paths.keras_model(variant.name).relative_to(paths.MODELS).as_posix(), "type": "model",
            "desc": f"{variant.name}: the Keras model {lineage}",
            "labels": [variant.name, variant.stage, kind, "keras"]}
        for mode in variants.modes_of(variant.name, modes):
            label = variants.label(variant.name, mode)
            found[label] = {
                "path": paths.tflite_file(variant.name, mode).relative_to(paths.MODELS).as_posix(), "type": "model",
                "desc": f"{label}.tflite: {variant.name} ({lineage}) converted to TFLite {mode}",
                "labels": [variant.name, mode, variant.stage, kind, "tflite"]}
    return found


def render(modes) -> str:
    return HEADER + yaml.safe_dump({"artifacts": declared(modes)}, sort_keys=False, width=120)


def write(root: Path, modes) -> bool:
    """Rewrite models/dvc.yaml under `root` for `modes`; True if it changed."""
    target = root / GENERATED
    text = render(modes)
    if target.is_file() and target.read_text() == text:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return True


def artifact_name(registered_name: str) -> str:
    """A DVC artifact name for a registered model's name: DVC takes letters, digits, '-', '_' and '/' only."""
    return re.sub(r"[^A-Za-z0-9_/-]+", "-", registered_name).strip("-_/") or "chosen"


def declare_chosen(root: Path, registration) -> str:
    """Declare the registered file as an artifact of `root`/dvc.yaml; one line saying what was done, or why not."""
    from dvc.annotations import Artifact  # noqa: PLC0415  (DVC's own writer keeps dvc.yaml's comments)
    from dvc.repo import Repo  # noqa: PLC0415

    variant, mode = variants.split_label(registration.file.removesuffix(".tflite"))
    path = paths.tflite_file(variant, mode)
    if not (root / path).is_file() or file_md5(root / path) != registration.file_md5:
        return (f"not declared in dvc.yaml's artifacts: the workspace's {path} is not the registered file "
                f"(`dvc exp apply` the experiment it came from, then register again)")
    name = artifact_name(registration.name)
    artifact = Artifact(path=path.as_posix(), type="model", desc=f"{registration.file} as registered in MLflow: "
                                                                  f"models:/{registration.name}/{registration.version}",
                        labels=[variant, mode, "chosen"],
                        meta={"mlflow_model": registration.name, "mlflow_version": registration.version,
                              "md5": registration.file_md5})
    with Repo(str(root)) as repo:
        repo.artifacts.add(name, artifact, dvcfile=str(root / "dvc.yaml"))
    return (f"declared it as artifact {name} in dvc.yaml: commit dvc.yaml with dvc.lock, then `gto register {name}` "
            f"versions it and `dvc artifacts get . {name}` fetches it")

