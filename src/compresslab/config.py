"""Reading the composed parameters (`params.yaml`) and flattening them for tracking.

Stage scripts read `params.yaml` from the working directory, never compose on their own: DVC composes
`conf/` into `params.yaml` on `dvc exp run` (with the `-S` overrides applied), and a queued experiment runs in
a temporary copy whose own `params.yaml` holds that experiment's values.
"""

from collections.abc import Iterable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from compresslab.errors import UserError

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the project root (where dvc.yaml is)")
    return OmegaConf.load(path)


def require_groups(params: DictConfig, *groups: str) -> None:
    """Raise a UserError naming the groups the parameters lack."""
    missing = [group for group in groups if group not in params]
    if missing:
        raise UserError(f"{PARAMS_FILE} lacks {missing}: compose it again with `dvc exp run` (or "
                        f"`compresslab params`)")


def section(params: DictConfig, *groups: str) -> DictConfig:
    """The named groups of the parameters, failing with the missing group's name."""
    require_groups(params, *groups)
    return OmegaConf.masked_copy(params, list(groups))


def flatten(cfg: Mapping | DictConfig, prefix: str = "") -> dict[str, object]:
    """Nested config to dotted keys (`prune.final_sparsity`), lists rendered as text, as MLflow params need."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = ",".join(map(str, value)) if isinstance(value, Iterable) and not isinstance(
                value, str) else value
    return flat
