"""conf/ is the source of the parameters: params.yaml must equal its composition, and options must be named."""

from pathlib import Path

import yaml
from dvc.utils.hydra import compose_and_dump

from compresslab.config import flatten

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_equals_what_conf_composes(tmp_path):
    composed = tmp_path / "params.yaml"
    compose_and_dump(composed, str(REPO / "conf"), None, "config", str(REPO), [])
    assert yaml.safe_load(composed.read_text()) == yaml.safe_load((REPO / "params.yaml").read_text()), \
        "params.yaml is stale: run `make params` and commit it"


def test_every_group_option_carries_its_name():
    for option in (REPO / "conf").glob("*/*.yaml"):
        content = yaml.safe_load(option.read_text())
        if option.parent.name == "experiment":
            assert content["experiment"]["name"] == option.stem, option
        else:
            assert content.get("name") == option.stem, f"{option} needs `name: {option.stem}`"


def test_every_preset_composes(tmp_path):
    for preset in (REPO / "conf" / "experiment").glob("*.yaml"):
        out = tmp_path / f"{preset.stem}.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), [f"experiment={preset.stem}"])
        assert yaml.safe_load(out.read_text())["experiment"]["name"] == preset.stem


def test_flatten_gives_dotted_keys_and_text_lists():
    flat = flatten({"prune": {"final_sparsity": 0.8, "layers": ["dense", "dense_1"]}, "seed": 1})
    assert flat == {"prune.final_sparsity": 0.8, "prune.layers": "dense,dense_1", "seed": 1}
