"""The weights a model starts from (`model.weights`): null (random), `imagenet`, or a file in `weights/`.

    dvc exp run -S model=efficientnet_b0 -S model.weights=imagenet -S train.freeze_backbone_epochs=3
    dvc exp run -S model.weights=weights/baseline-cifar.keras     # a backbone trained elsewhere

A file is read layer by layer, in model order: the weighted layers of the model built here take the file's
weighted layers one for one, so a file made by the same architecture fits whatever its layer names. Shapes must
agree, except that a classifier for another number of classes (the last layer) and layers the file does not
have (a backbone-only file has no head) keep their initial weights: that is transfer to a new data set.

Readable files: a whole model (`.keras` zip, or HDF5 as compresslab and `model.save(..h5)` write it), a
weights-only HDF5 (`save_weights('x.h5')`, Keras' published ImageNet files), and a `.weights.h5` (the newer
format), which must come from the same model and classes since it is loaded by Keras itself.

Files live in `weights/`, a dependency of the train stage, so a changed file re-runs what it changes. The
ImageNet files are Keras' own, fetched by Keras into ~/.keras/models (or $KERAS_HOME/models) and checked by
hash; offline they must be placed there (README).
"""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tf_keras as keras

from compresslab.errors import UserError
from compresslab.models.efficientnet import INPUT_SCALING

WEIGHTS_FOLDER = Path("weights")
IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 30   # a machine without network fails fast instead of waiting on the socket
# MobileNetV2's published widths and input sizes (tf_keras.applications.MobileNetV2); another size takes the
# 224 file, as Keras does.
MOBILENETV2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENETV2_ROWS = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class ImagenetFile:
    name: str         # the file's name in Keras' cache folder
    origin: str       # where Keras downloads it from
    md5: str | None   # Keras' published hash (None where Keras publishes none)

    @property
    def cached(self) -> Path:
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / self.name


def imagenet_file(model_cfg, image_size: int) -> ImagenetFile:
    """The Keras ImageNet backbone file (no classifier) of the configured model; a UserError for a model Keras
    publishes none for."""
    from tf_keras.src.applications import efficientnet, mobilenet_v2  # noqa: PLC0415  (imagenet only)

    if model_cfg.name == "efficientnet_b0" and (model_cfg.alpha or 1.0) == 1.0 and (model_cfg.depth or 1.0) == 1.0:
        return ImagenetFile("efficientnetb0_notop.h5", efficientnet.BASE_WEIGHTS_PATH + "efficientnetb0_notop.h5",
                            efficientnet.WEIGHTS_HASHES["b0"][1])
    if model_cfg.name == "mobilenetv2" and float(model_cfg.alpha or 0.35) in MOBILENETV2_ALPHAS:
        rows = image_size if image_size in MOBILENETV2_ROWS else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(model_cfg.alpha or 0.35)}_{rows}_no_top.h5"
        return ImagenetFile(name, mobilenet_v2.BASE_WEIGHT_PATH + name, None)
    raise UserError(f"model.weights=imagenet: Keras publishes ImageNet weights for efficientnet_b0 (alpha=depth=1) "
                    f"and mobilenetv2 (alpha in {', '.join(map(str, MOBILENETV2_ALPHAS))}), not for "
                    f"model={model_cfg.name} with these options: train a backbone and give its file in weights/")


def locate(model_cfg, image_size: int) -> Path | None:
    """The file `model.weights` names, checked to exist, before any training work; None for random weights.
    `imagenet` is looked up in Keras' cache and downloaded there when missing (a UserError without network)."""
    if model_cfg.weights is None:
        return None
    if model_cfg.weights == IMAGENET:
        wanted = imagenet_file(model_cfg, image_size)
        if wanted.cached.is_file():
            return wanted.cached
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            return Path(keras.utils.get_file(wanted.name, wanted.origin, cache_subdir="models",
                                             file_hash=wanted.md5))
        except Exception as err:  # noqa: BLE001  (Keras raises Exception for every fetch failure)
            raise UserError(f"model.weights=imagenet needs {wanted.cached}, which is not there and could not be "
                            f"downloaded ({str(err).splitlines()[0][:120]}): fetch {wanted.origin} on a machine "
                            f"with internet and place it there") from None
        finally:
            socket.setdefaulttimeout(previous)
    path = Path(model_cfg.weights)
    if path.is_absolute() or WEIGHTS_FOLDER not in path.parents:
        raise UserError(f"model.weights={model_cfg.weights!r} is not in {WEIGHTS_FOLDER}/: copy the file there and "
                        f"name it as {WEIGHTS_FOLDER}/<file> (train depends on that folder, so a changed file "
                        f"re-runs training)")
    if not path.is_file():
        raise UserError(f"model.weights={model_cfg.weights!r} does not exist: put the file there, or set "
                        f"model.weights=null to start from random weights")
    return path


def read_layers(path: Path) -> list[tuple[str, list[np.ndarray]]] | None:
    """(layer name, weights) of every weighted layer in the file, in model order, input scaling left out;
    None for a `.weights.h5`, which only Keras can place."""
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            if "model_config" not in file.attrs:
                if "layer_names" not in file.attrs:
                    return None
                return [(name, arrays) for name, arrays in _weights_only(file) if arrays]
    from compresslab.models.saving import load_model  # noqa: PLC0415  (TFMOT scopes, only for whole models)

    try:
        model = load_model(path)
    except (OSError, ValueError) as err:
        raise UserError(f"model.weights={path}: not a Keras model or weights file ({str(err)[:120]})") from None
    return [(layer.name, layer.get_weights()) for layer in model.layers
            if layer.weights and type(layer).__name__ not in INPUT_SCALING]


def _weights_only(file: h5py.File):
    """A `save_weights('x.h5')` file: its layers in model order, each with its arrays in order. Layers holding
    a Normalization's statistics (mean, variance, count: Keras' EfficientNet files) are input scaling."""
    for name in (n.decode() if isinstance(n, bytes) else n for n in file.attrs["layer_names"]):
        group = file[name]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        if names and {n.rsplit("/", 1)[-1].split(":")[0] for n in names} == {"mean", "variance", "count"}:
            continue
        yield name, [np.asarray(group[weight]) for weight in names]


def load_into(model: keras.Model, path: Path, origin: str) -> list[str]:
    """Set `model`'s weights from the file at `path` (`origin`: the config value, for messages).

    Returns:
      The weighted layers left as initialised: the file's classifier had another class count, or the file
      holds no such layer (a backbone without its head).
    """
    source = read_layers(path)
    if source is None:
        try:
            model.load_weights(path)
        except (ValueError, KeyError) as err:
            reason = str(err).splitlines()[0][:160]
            raise UserError(f"model.weights={origin} does not fit model={model.name} ({reason}): a .weights.h5 "
                            f"must come from the same model and classes; save a whole model (.keras) to transfer "
                            f"between data sets") from None
        return []
    targets = [layer for layer in model.layers if layer.weights]
    if len(source) > len(targets):
        raise UserError(f"model.weights={origin} holds {len(source)} weighted layers, model {model.name} has "
                        f"{len(targets)}: the file comes from a larger architecture; use a file of model "
                        f"{model.name}")
    kept = [layer.name for layer in targets[len(source):]]
    for index, (target, (name, arrays)) in enumerate(zip(targets, source)):
        wanted = [tuple(weight.shape) for weight in target.weights]
        found = [array.shape for array in arrays]
        if wanted == found:
            target.set_weights(arrays)
        elif index == len(targets) - 1 and len(wanted) == len(found) and wanted[0][:-1] == found[0][:-1]:
            kept.append(target.name)   # the classifier of another class count: transfer to this data set
        else:
            raise UserError(f"model.weights={origin}: layer {target.name!r} ({type(target).__name__}) of model "
                            f"{model.name} has weights {wanted}, the file's layer {name!r} has {found}: the file "
                            f"holds another architecture, width or channel count; use a file of this model")
    return kept
