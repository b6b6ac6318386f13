"""DVC lineage for MLflow runs: the md5 of every data and model file a stage read and wrote, as DVC records it.

DVC writes a stage's entry in dvc.lock only after the stage exits, so a stage that logs its MLflow run while
it runs cannot copy its hashes from there. Instead the stage's deps and outs are read from dvc.yaml and hashed:
- a file: the md5 of its bytes, which is what DVC 3 (`hash: md5`) writes into dvc.lock for it;
- a directory dep: the hash its producer recorded (another stage's outs in dvc.lock, written when that stage
  finished earlier in the same `dvc repro`, or a `.dvc` file such as data.dvc), else computed like a directory
  out;
- a directory out: computed as DVC does (md5 of the sorted JSON list of {md5, relpath} of its files, + ".dir"),
  unless a .dvcignore holds patterns (DVC would leave those files out), then skipped.
Source files (deps ending .py) are left out: git_commit pins them.
"""

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

DEP, OUT = "dvc.dep.", "dvc.out."
OUT_KINDS = ("outs", "metrics", "plots")  # metrics and plots files are outs too: dvc.lock lists them there
# Where stages are defined: the default pipeline, then the analyses a plain `dvc repro` leaves out (their stages
# run from the root, `wdir: ..`, so their paths read as the root's).
PIPELINE_FILES = ("dvc.yaml", "analysis/dvc.yaml")
CHUNK = 2**20


def stage_hashes(stage: str, root: str | Path = ".") -> dict[str, str]:
    """Tags `dvc.dep.<path>` / `dvc.out.<path>` = md5 for a stage of root/dvc.yaml, taken while it runs.

    Args:
      stage: the stage name in dvc.yaml (or in analysis/dvc.yaml).
      root: the folder holding dvc.yaml and dvc.lock (DVC runs a stage there).

    Returns:
      The tags; {} outside a DVC project or for a stage no pipeline file defines. Paths that do not exist
      (yet) and directories whose hash cannot be known are left out.
    """
    root = Path(root)
    spec = next((found for name in PIPELINE_FILES
                  if (found := read_yaml(root / name).get("stages", {}).get(stage)) is not None), None)
    if not isinstance(spec, dict):
        return {}
    deps = [p for p in declared_paths(spec.get("deps")) if not p.endswith(".py")]
    locked = producer_hashes(root, deps) if deps else {}
    tags = {}
    for path in deps:
        target = root / path
        md5 = locked.get(path) if target.is_dir() else None
        add_tag(tags, DEP, path, md5 or content_md5(root, target))
    for path in (p for kind in OUT_KINDS for p in declared_paths(spec.get(kind))):
        add_tag(tags, OUT, path, content_md5(root, root / path))
    return tags


def dataset_input(dvc_file: str | Path, source_root: str | Path, context: str) -> DatasetInput | None:
    """The data a `.dvc` file tracks as an MLflow dataset input: name = its path, digest = its DVC md5.

    Args:
      dvc_file: e.g. data.dvc (written by `dvc add data/raw`).
      source_root: where the data lives for good (DVC_ROOT for queued experiments, whose copy is deleted).
      context: the `mlflow.data.context` input tag (the stage that used it).

    Returns:
      None when the file is missing or records no md5.
    """
    outs = dvc_file_outs(Path("."), dvc_file)
    if not outs:
        return None
    path, md5 = next(iter(outs.items()))
    source = get_dataset_source_from_json(json.dumps({"uri": str(Path(source_root) / path)}), "local")
    entity = MetaDataset(source, name=path, digest=md5)._to_mlflow_entity()
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    # libyaml's loader: dvc.lock lists every stage's hashes, and the pure-Python one takes a tenth of a second
    # per file in every stage that logs.
    loaded = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return loaded if isinstance(loaded, dict) else {}


def declared_paths(entries: Iterable | None) -> list[str]:
    """Paths of a dvc.yaml deps/outs list, whose items are `path` or `{path: {options}}`."""
    paths = [next(iter(e)) if isinstance(e, dict) else e for e in entries or ()]
    # Templated paths (${...}) are resolved by DVC only; such a path names no file here.
    return [posixpath.normpath(p) for p in paths if isinstance(p, str) and "${" not in p]


def dvc_file_outs(root: Path, dvc_file: str | Path) -> dict[str, str]:
    """{path relative to root: md5} of the outs that root/dvc_file (a `.dvc` file) records."""
    outs = read_yaml(root / dvc_file).get("outs") or []
    base = Path(dvc_file).parent  # a .dvc file names its outs relative to its own folder
    return {posixpath.normpath((base / o["path"]).as_posix()): o["md5"] for o in outs
            if isinstance(o, dict) and o.get("path") and o.get("md5")}


def producer_hashes(root: Path, deps: list[str]) -> dict[str, str]:
    """{path: md5} of every out recorded in dvc.lock and in the .dvc files at the root or beside a dep."""
    found = {}
    for name in {*(p.name for p in root.glob("*.dvc")), *(f"{d}.dvc" for d in deps)}:
        found.update(dvc_file_outs(root, name))
    for entry in read_yaml(root / "dvc.lock").get("stages", {}).values():
        for out in entry.get("outs") or []:
            if out.get("md5"):
                found[posixpath.normpath(out["path"])] = out["md5"]
    return found


def content_md5(root: Path, path: Path) -> str | None:
    """DVC's md5 of a file or directory in the workspace; None if missing or not computable."""
    if path.is_file():
        return file_md5(path)
    if path.is_dir() and not dvcignore_patterns(root):
        return dir_md5(path)
    return None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fobj:
        while chunk := fobj.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dir_md5(path: Path) -> str:
    """The `.dir` hash DVC gives a directory: md5 of the JSON list of its files, sorted by relative path."""
    files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    listing = [{"md5": file_md5(f), "relpath": rel} for rel, f in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def dvcignore_patterns(root: Path) -> list[str]:
    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    return [line for line in map(str.strip, lines) if line and not line.startswith("#")]


def add_tag(tags: dict[str, str], prefix: str, path: str, md5: str | None) -> None:
    """Add `<prefix><path>` = md5, the path made a valid MLflow key (`/ . - _ :` space and alphanumerics)."""
    norm = posixpath.normpath(path)
    if md5 is None or norm.startswith(("/", "..")):  # outside the project: no stable name
        return
    tags[prefix + re.sub(r"[^/\w.\- :]", "_", norm)[:250 - len(prefix)]] = md5
