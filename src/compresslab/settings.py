"""The declared schema of `params.yaml`: each config group becomes a typed, frozen object once, at the stage
boundary, and the technique code below trusts what it receives.

    seed, data, train, prune = settings.read(params, "seed", "data", "train", "prune")

A value the schema refuses is one `UserError` line naming the dotted key and the fix
(`prune.final_sparsity must be a fraction in [0, 1), got 1.2: set it to ...`); a key no group declares is refused
the same way (`prune has unknown key(s) ['final_sparsty']: use name, schedule, ...`), since a typo would otherwise
silently do nothing.

Why pydantic (pinned in requirements.lock) and not OmegaConf structured configs: OmegaConf converts on
assignment ("8" -> 8, "yes" -> True, 2 -> 2.0 for a float field), which would accept values refused today and
could change a number on its way to TensorFlow; it has no range or cross-key checks. Pydantic forbids unknown
keys, freezes the result, runs range and cross-key checks declared beside each field, and keeps what passes as
it came: every number is declared `int | float` or `int`, so an int learning rate stays an int, as before.
Checks that need the model (layer selection, cluster counts against a layer's weights) stay with the model.
"""

import re
from typing import Annotated, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, model_validator

from compresslab.config import require_groups
from compresslab.detection.schema import AnchorsConfig, NmsConfig
from compresslab.errors import UserError
from compresslab.validation import (POSITIVE, TRUE_OR_FALSE, Epochs, Flag, Layers, LearningRate, PRUNE_FRACTION,
                                      Refused, Step, fraction, is_number, is_whole, nullable, one_of, positive,
                                      rule, whole_from, whole_runs, flag)
from compresslab.variants import DECLARED, FLOAT_VARIANTS, MODES

# The names each choice accepts (with the library's name for it, where the name differs).
SCHEDULES = ("polynomial", "constant")
CENTROID_INITS = {"kmeans++": "KMEANS_PLUS_PLUS", "density-based": "DENSITY_BASED", "linear": "LINEAR",
                  "random": "RANDOM"}  # TFMOT's CentroidInitialization members
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop"}  # tf_keras.optimizers classes
STRATEGIES = ("default", "mirrored", "multi_worker")
CHANNELS = (1, 3)
TASKS = ("classification", "detection")
# Annotation formats a detection data set may come in (data.format): Pascal VOC XML or COCO JSON.
DETECTION_FORMATS = ("voc", "coco")
# prune.layers words beyond all/dense/conv: `auto` measures each layer first (techniques/sensitivity.py),
# `xnnpack` picks the 1x1 convolutions of a model built for XNNPACK's sparse inference.
AUTO_LAYERS = "auto"
XNNPACK_LAYERS = "xnnpack"
# Sparsity-preserving clustering pins one centroid at zero; TFMOT then needs two more to cluster anything.
MIN_CLUSTERS_PRESERVING_SPARSITY = 3
# TFMOT's cluster_preserve_quantize_registry treats a kernel with more distinct values as unclustered.
MAX_PRESERVED_CLUSTERS = 1024
DEFAULT_IMAGES_PER_SHARD = 2048  # 25 MB of 64x64x3 pixels before compression
SHUFFLE_BUFFER = 4096            # images a training pipeline shuffles among
M_BY_N_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_m_by_n(value) -> tuple[int, int] | None:
    """"2:4" (m zeros in every n consecutive weights) -> (2, 4). TFMOT 0.8.1 asserts only m < n, at the first
    training step; m = 0 would prune nothing, so 1 <= m < n is required here, before any training."""
    if value is None or isinstance(value, tuple):
        return value
    if is_number(value):  # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124
        raise Refused("{key}={value!r} is a number, not a pattern: quote it in YAML (m_by_n: \"2:4\"); an "
                      "unquoted 2:4 is read as the base-60 number 124", value, templated=True)
    match = M_BY_N_PATTERN.match(value) if isinstance(value, str) else None
    if not match:
        raise Refused("{key}={value!r} is not an m-by-n pattern: use a string like \"2:4\" (2 zeros in every 4 "
                      "weights), or null for unstructured pruning", value, templated=True)
    m, n = int(match.group(1)), int(match.group(2))
    if not 1 <= m < n:
        raise Refused("{key}={value!r} is not a pattern TFMOT can apply: it needs 1 <= m < n zeros per block "
                      "(e.g. \"2:4\")", value, templated=True)
    return m, n


class Group(BaseModel):
    """A config group: frozen, unknown keys refused. `name` is the chosen option's name (conf/<group>/<name>.yaml)."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None


class Budget(Group):
    """A fine-tuning budget (finetune, pqat, cqat; and part of every technique's group)."""
    epochs: Epochs
    learning_rate: LearningRate


class AugmentConfig(BaseModel):
    """data.augment: seeded, training only; each 0 / false is off."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    flip: Flag = False
    crop: Annotated[int, rule((whole_from(0), "{key} must be a whole number of pixels >= 0 (0: off), "
                                              "got {value!r}"))] = 0
    brightness: Annotated[int | float, rule((fraction, "{key} must lie in [0, 1) (0: off), got {value!r}"))] = 0

    @property
    def augmenting(self) -> bool:
        return bool(self.flip or self.crop or self.brightness)


class DataConfig(Group):
    """The data group. `task` says what `raw` holds: one sub-folder of images per class (classification), or a
    Pascal VOC / COCO folder of images and boxes (detection, `format` says which; `classes` optionally fixes
    the class list, so that an annotation naming another class is refused)."""
    task: Annotated[Literal[TASKS], one_of(TASKS, "a task")] = "classification"
    raw: Annotated[str, rule((lambda v: isinstance(v, str) and v.strip() != "", "{key} must be the folder of "
                                                                                 "the raw data, got {value!r}"))] \
        = "data/raw"
    format: Annotated[Literal[DETECTION_FORMATS] | None, rule((nullable(lambda v: v in DETECTION_FORMATS),
                      f"{{key}}={{value!r}} is not an annotation format: use one of {', '.join(DETECTION_FORMATS)}"))] \
        = None
    classes: Annotated[list[str] | None, rule((nullable(lambda v: isinstance(v, list) and v and all(
        isinstance(name, str) and name for name in v) and len(set(v)) == len(v)),
        "{key}={value!r} must be null or a list of distinct class names"))] = None
    image_size: Annotated[int, rule((whole_from(8), "{key} must be an integer of at least 8, got {value!r}"))]
    channels: Annotated[int, rule((lambda v: is_whole(v) and v in CHANNELS,
                                   "{key} must be 1 (grayscale) or 3 (RGB), got {value!r}"))]
    val_fraction: Annotated[int | float, rule((lambda v: is_number(v) and 0 < v < 1,
                                               "{key} must lie strictly between 0 and 1, got {value!r}"))]
    test_fraction: Annotated[int | float, rule((lambda v: is_number(v) and 0 < v < 1,
                                                "{key} must lie strictly between 0 and 1, got {value!r}"))]
    seed: Annotated[int, rule((whole_from(0), "{key} must be a whole number >= 0, got {value!r}"))]
    max_bad_share: Annotated[int | float, rule((fraction, "{key} must lie in [0, 1), got {value!r}"))]
    max_images_per_class: Annotated[int | None, rule((nullable(whole_from(1)), "{key} must be a positive integer "
                                                                               "or null, got {value!r}"))] = None
    images_per_shard: Annotated[int, rule((whole_from(1), "{key} must be a positive integer, got {value!r}"))] = \
        DEFAULT_IMAGES_PER_SHARD
    shuffle_buffer: Annotated[int, rule((whole_from(1), "{key} must be a positive number of images, "
                                                        "got {value!r}"))] = SHUFFLE_BUFFER
    augment: AugmentConfig | None = None

    @model_validator(mode="after")
    def _splits_and_crop_fit(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise Refused("data.val_fraction + data.test_fraction must be below 1 to leave images for training")
        if self.augment is not None and self.augment.crop >= self.image_size // 2:
            raise Refused(f"data.augment.crop={self.augment.crop} must be below half of data.image_size="
                          f"{self.image_size}: a few pixels shift the image, more crop it away")
        if self.task == "classification" and (self.format is not None or self.classes is not None):
            raise Refused("data.format and data.classes describe a detection data set: set data.task=detection, "
                          "or leave them null for class folders")
        return self

    @property
    def annotation_format(self) -> str:
        """The detection data's annotation format: data.format, Pascal VOC when unset."""
        return self.format or "voc"


class ModelConfig(Group):
    """The model group: `name` picks a builder of the model zoo (`models.build_model`, which knows the names and
    refuses others); the other keys are the options some models take (mlp: hidden_units, dropout; mobilenetv2:
    alpha; the EfficientNets: alpha, depth), left out where the zoo's defaults apply, and the weights to start
    from."""
    name: str
    hidden_units: Annotated[list[int] | None, rule((nullable(lambda v: isinstance(v, list) and v and all(
        map(whole_from(1), v))), "{key}={value!r} must be a non-empty list of positive layer widths"))] = None
    dropout: Annotated[int | float | None, rule((nullable(fraction), "{key} must be a rate in [0, 1), "
                                                                     "got {value!r}"))] = None
    alpha: Annotated[int | float | None, rule((nullable(positive), "{key} must be a width multiplier above 0, "
                                                                   "got {value!r}"))] = None
    width: Annotated[int | None, rule((nullable(whole_from(1)), "{key} must be a whole number of filters >= 1, "
                                                                "got {value!r}"))] = None
    depth: Annotated[int | float | None, rule((nullable(positive), "{key} must be a depth coefficient above 0 "
                                                                   "(1.0: as published), got {value!r}"))] = None
    # null: random initial weights; `imagenet`: Keras' published backbone (models/pretrained.py); otherwise a
    # weights file (.h5, .weights.h5, .keras) to start from, a DVC dependency of train.
    weights: Annotated[str | None, rule((nullable(lambda v: isinstance(v, str) and v.strip() != ""),
                                         "{key} must be null, imagenet or the path of a weights file, "
                                         "got {value!r}"))] = None
    anchors: AnchorsConfig | None = None   # a detector's (detection/schema.py)
    nms: NmsConfig | None = None


class TrainConfig(Budget):
    optimizer: Annotated[Literal[tuple(OPTIMIZERS)], rule((lambda v: v in OPTIMIZERS,
                                    f"unknown optimizer {{value!r}}: use one of {', '.join(OPTIMIZERS)}"))] = "adam"
    batch_size: Annotated[int, rule(POSITIVE, (is_whole, "{key} must be a whole number of images, got {value!r}"))]
    patience: Annotated[int | None, rule((nullable(whole_from(0)), "{key} must be a whole number of epochs >= 0 "
                                                                   "(0: no early stopping), got {value!r}"))] = None
    reduce_lr_patience: Annotated[int | None, rule((nullable(whole_from(0)), "{key} must be a whole number of "
                                                    "epochs >= 0 (0: a constant rate), got {value!r}"))] = None
    strategy: Annotated[Literal[STRATEGIES], rule((lambda v: v in STRATEGIES, f"{{key}}={{value!r}} does not "
                                                   f"exist: use one of {', '.join(STRATEGIES)}"))] = "default"
    # Transfer learning (models/transfer.py): the first N epochs train the classifier on the frozen backbone of
    # model.weights, then everything trains at fine_tune_learning_rate (null: learning_rate / 10).
    freeze_backbone_epochs: Annotated[int, rule((whole_from(0), "{key} must be a whole number of epochs >= 0 "
                                                                "(0: no frozen phase), got {value!r}"))] = 0
    fine_tune_learning_rate: Annotated[int | float | None, rule((nullable(positive), "{key} must be a learning "
                                                                 "rate above 0 or null, got {value!r}"))] = None

    @model_validator(mode="after")
    def _frozen_phase_fits(self):
        if self.freeze_backbone_epochs >= self.epochs:
            raise Refused(f"train.freeze_backbone_epochs={self.freeze_backbone_epochs} leaves no epoch of "
                          f"train.epochs={self.epochs} to fine-tune the unfrozen model: lower it or raise epochs")
        return self

    @property
    def unfrozen_learning_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10


class PruneConfig(Budget):
    schedule: Annotated[Literal[SCHEDULES], one_of(SCHEDULES, "a pruning schedule")]
    initial_sparsity: Annotated[int | float | None, rule(PRUNE_FRACTION)] = None
    final_sparsity: Annotated[int | float | None, rule(PRUNE_FRACTION)] = None
    target_sparsity: Annotated[int | float | None, rule(PRUNE_FRACTION)] = None
    begin_step: Step = None
    end_step: Step = None
    frequency: Annotated[int, rule((whole_from(1), "{key} must be a whole number of steps > 0, got {value!r}: "
                                                   "set how often the masks are updated, e.g. 100"))]
    layers: Annotated[Layers, rule((lambda v: v is not None, "{key} is not set: use all, dense, conv, auto, "
                                                             "xnnpack or a list of layer names"))]
    auto_max_drop: Annotated[int | float | None, rule((nullable(positive), "{key} must be a number of percentage "
                                                       "points > 0, got {value!r}: set the validation accuracy "
                                                       "one layer may cost, e.g. 1.0"))] = None
    m_by_n: Annotated[tuple[int, int] | None, BeforeValidator(parse_m_by_n)] = None

    @property
    def pattern(self) -> str:
        """m_by_n as written ('2:4'), for messages."""
        return f"{self.m_by_n[0]}:{self.m_by_n[1]}" if self.m_by_n else "null"

    @property
    def schedule_end(self) -> float:
        """The sparsity the schedule ends at: final_sparsity (polynomial) or target_sparsity (constant)."""
        return float(self.final_sparsity if self.schedule == "polynomial" else self.target_sparsity)

    def describe(self) -> str:
        """What is pruned, in words: 'polynomial schedule to 50% on all', '2:4 structured on dense', ..."""
        how = (f"{self.pattern} structured" if self.m_by_n else
               f"{self.schedule} schedule to {self.schedule_end:.0%}")
        which = ("the layers whose validation accuracy drops at most "
                 f"{self.auto_max_drop:g} pp when pruned alone (auto)" if self.layers == AUTO_LAYERS else
                 "the 1x1 convolutions XNNPACK runs sparse" if self.layers == XNNPACK_LAYERS else self.layers)
        return f"{how} on {which}"

    @model_validator(mode="after")
    def _schedule_and_layers_agree(self):
        level = "final_sparsity" if self.schedule == "polynomial" else "target_sparsity"
        if getattr(self, level) is None:
            raise Refused(PRUNE_FRACTION[1].format(key=f"prune.{level}", value=None))
        initial = self.initial_sparsity or 0.0
        if self.schedule == "polynomial" and initial > self.final_sparsity:
            raise Refused(f"prune.initial_sparsity={initial} is above prune.final_sparsity={self.final_sparsity}: "
                          f"the schedule only grows sparsity; lower initial_sparsity")
        if self.end_step is not None and (self.begin_step or 0) >= self.end_step:
            raise Refused(f"prune.begin_step={self.begin_step or 0} is not before prune.end_step={self.end_step}: "
                          f"pruning needs begin_step < end_step (or leave them null)")
        if self.layers == XNNPACK_LAYERS and self.m_by_n:
            raise Refused(f"prune.layers=xnnpack prunes for XNNPACK's unstructured sparse kernels, not "
                          f"prune.m_by_n={self.pattern!r}: set m_by_n to null")
        if self.layers == AUTO_LAYERS and self.auto_max_drop is None:
            raise Refused("prune.auto_max_drop must be a number of percentage points > 0, got None: set the "
                          "validation accuracy one layer may cost, e.g. 1.0")
        if self.layers == AUTO_LAYERS and self.m_by_n:
            raise Refused(f"prune.layers=auto measures unstructured pruning, not prune.m_by_n={self.pattern!r}: "
                          f"list the layers instead, or set m_by_n to null")
        return self


class QuantizeConfig(Budget):
    layers: Annotated[Layers, rule((lambda v: v is not None, "{key} is not set: use all, dense, conv or a list "
                                                             "of layer names"))]
    # 0: QAT starts from TFMOT's initial ranges ([-6, 6], followed by a slow moving average); N: from the ranges
    # N seeded training batches give (as post-training calibration would), for QAT, PQAT, CQAT and PCQAT alike.
    calibration_batches: Annotated[int, rule((whole_from(0), "{key} must be a whole number >= 0, got {value!r}: "
                                              "0 starts QAT from TFMOT's ranges, e.g. 8 calibrates them first"))] = 0


class ClusterConfig(Budget):
    number_of_clusters: Annotated[int, rule((whole_from(2), "{key} must be an integer of at least 2, got "
                                                            "{value!r}: set it to 2 or more (8 or 16 are usual)"),
                                            (lambda v: v <= MAX_PRESERVED_CLUSTERS,
                                             f"{{key}}={{value!r}} is more than the {MAX_PRESERVED_CLUSTERS} "
                                             "centroids TFMOT's cluster-preserving QAT keeps (above that cqat and "
                                             "pcqat quietly fall back to plain QAT): set it to "
                                             f"{MAX_PRESERVED_CLUSTERS} or less"))]
    centroid_init: Annotated[Literal[tuple(CENTROID_INITS)] | None,
                             rule((nullable(lambda v: v in CENTROID_INITS), "{key}={value!r} is not a centroid "
                                   f"initialization: use one of {', '.join(CENTROID_INITS)}"))] = None
    layers: Layers | None = None
    per_channel: Annotated[bool | None, rule((nullable(flag), TRUE_OR_FALSE))] = None


class PcqatConfig(Budget):
    cluster_epochs: Epochs


MIXED_PRECISIONS = ("int4", "int8", "float32")   # tflite/allocation.py's PRECISION_RECIPES, without its imports


class MixedConfig(BaseModel):
    """convert.mixed: the `mixed` mode's gzipped size target (`bytes`, or the float32 file's size over `ratio`; one
    of the two) and the precisions each layer may get."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: Annotated[int | None, rule((nullable(whole_from(1)), "{key} must be a whole number of bytes >= 1 or "
                                                                "null, got {value!r}"))] = None
    ratio: Annotated[int | float | None, rule((nullable(lambda v: is_number(v) and v > 1),
                                               "{key} must be a number above 1 (the float32 file's size over "
                                               "the target) or null, got {value!r}"))] = None
    precisions: Annotated[list[str], rule((lambda v: isinstance(v, list) and v and all(
        p in MIXED_PRECISIONS for p in v), f"{{key}}={{value!r}} must be a non-empty list of "
                                          f"{', '.join(MIXED_PRECISIONS)}"))] = list(MIXED_PRECISIONS)
    # The float variants that get a mixed file (null: all): a target one variant reaches (a pruned one) can be
    # out of reach for another.
    variants: Annotated[list[str] | None, rule((nullable(lambda v: isinstance(v, list) and v and all(
        name in FLOAT_VARIANTS for name in v)), f"{{key}}={{value!r}} must be null or a non-empty list of "
                                               f"{', '.join(FLOAT_VARIANTS)}"))] = None

    @model_validator(mode="after")
    def _one_target(self):
        if (self.bytes is None) == (self.ratio is None):
            raise Refused("convert.mixed needs exactly one of bytes and ratio: e.g. convert.mixed.ratio=20 and "
                          "convert.mixed.bytes=null")
        return self


class ConvertConfig(Group):
    modes: Annotated[list[str], rule((lambda v: isinstance(v, list) and v and all(m in MODES for m in v),
                                      f"{{key}}={{value!r}} must be a non-empty list of {', '.join(MODES)}"))]
    calibration_samples: Annotated[int, rule((whole_from(1), "{key} must be a positive integer, got {value!r}"))]
    int8_io: Flag = False
    skip_failed: Flag = False
    sparse_weights: Flag = False
    mixed: MixedConfig = MixedConfig(ratio=8)


DEVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class DeviceConfig(BaseModel):
    """One entry of evaluate.devices: a board the device stage times every file on, over SSH (devices/)."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    # In metric names (<variant>.<mode>.<device>.<figure>) and report headings.
    name: Annotated[str, rule((lambda v: isinstance(v, str) and bool(DEVICE_NAME.match(v)),
                               "{key}={value!r} must be a short lower-case name (letters, digits, - and _), e.g. "
                               "pi5"))]
    # As OpenSSH takes it: user@host, a host, or a Host alias of ~/.ssh/config (its User, Port, IdentityFile apply).
    host: Annotated[str, rule((lambda v: isinstance(v, str) and v.strip() and " " not in v,
                               "{key}={value!r} must be an SSH destination: user@host or a ~/.ssh/config alias"))]
    port: Annotated[int | None, rule((nullable(lambda v: is_whole(v) and 1 <= v <= 65535),
                                      "{key} must be a TCP port (1-65535) or null (22, or ~/.ssh/config's), got "
                                      "{value!r}"))] = None
    identity_file: str | None = None   # null: ~/.ssh/config's, the agent's or ~/.ssh/id_* keys
    known_hosts: str | None = None     # null: ~/.ssh/known_hosts, as OpenSSH checks host keys
    python: str = "python3"            # the device's Python, with numpy and ai-edge-litert installed
    threads: Annotated[list[int], rule((lambda v: isinstance(v, list) and v and all(map(whole_from(1), v)),
                                        "{key}={value!r} must be a non-empty list of positive thread counts, "
                                        "e.g. [1, 2, 4]"))] = [1]
    # The most a device may take to time one variant's files; a device that stops answering fails after it.
    timeout_s: Annotated[int | float, rule((positive, "{key} must be a number of seconds > 0, got {value!r}"))] = 600

    @property
    def destination(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def unique_device_names(devices: list) -> bool:
    names = [device.get("name") if isinstance(device, dict) else None for device in devices]
    return len(names) == len(set(names))


class EvaluateConfig(Group):
    threads: Annotated[list[int], rule((lambda v: isinstance(v, list) and v and all(map(whole_from(1), v)),
                                        "{key}={value} must be a non-empty list of positive thread counts, "
                                        "e.g. [1, 2]"))]
    positive_class: str | None = None
    warmup_runs: Annotated[int, whole_runs(0)]
    min_runs: Annotated[int, whole_runs(1)]
    min_seconds: Annotated[int | float, rule((lambda v: is_number(v) and v >= 0, "{key} must be a number of "
                                                                                 "seconds >= 0, got {value!r}"))]
    ratio_rounds: Annotated[int, whole_runs(1)] = 20
    measure_memory: Flag = True
    profile_seconds: Annotated[int | float, rule((lambda v: is_number(v) and v >= 0, "{key} must be a number of "
                                                  "seconds >= 0 (0: no profile), got {value!r}"))] = 0
    # Detection only (decoding is the model's: model.nms): precision and recall's operating point, and the
    # resamples behind every mAP interval.
    score_threshold: Annotated[int | float, rule((fraction, "{key} must lie in [0, 1), got {value!r}: the score "
                                                  "at which precision and recall are counted, e.g. 0.5"))] = 0.5
    bootstrap_samples: Annotated[int, rule((whole_from(100), "{key} must be a whole number >= 100, got {value!r}: "
                                            "resamples of the test images behind every mAP interval"))] = 1000
    # Boards to time every file on as well, over SSH (stage device@<variant>); none by default.
    devices: Annotated[list[DeviceConfig], rule((lambda v: isinstance(v, list), "{key} must be a list of devices "
                                                 "(name, host, ...), got {value!r}"),
                                                (unique_device_names, "{key} names a device twice: give each "
                                                 "device its own name"))] = []


class SensitivityConfig(Group):
    sparsity: Annotated[int | float, rule((lambda v: is_number(v) and 0 < v < 1, "{key} must be a fraction in "
                                           "(0, 1), got {value!r}: set the sparsity each layer is pruned to alone, "
                                           "e.g. 0.8"))]
    quantize: Annotated[bool, rule((flag, TRUE_OR_FALSE + ": true also measures each layer quantized alone to "
                                          "int8"))]
    epochs: Annotated[int, rule((whole_from(0), "{key} must be a whole number of epochs >= 0, got {value!r}: 0 "
                                                "measures without fine-tuning, a few epochs fine-tune every "
                                                "variant and the reference alike"))]
    learning_rate: LearningRate
    calibration_batches: Annotated[int, rule((whole_from(1), "{key} must be a whole number >= 1, got {value!r}: "
                                                             "set how many training batches calibrate the int8 "
                                                             "ranges, e.g. 8"))]
    layers: Layers = "all"   # which layers get a row (techniques/layers.py's words or names), checked on the model


Seed = Annotated[int, rule((whole_from(0), "{key} must be a whole number >= 0, got {value!r}: it seeds Python, "
                                           "NumPy and TensorFlow"))]

# The groups with keys of their own, and their schemas.
OWN_SCHEMAS = {"seed": Seed, "data": DataConfig, "model": ModelConfig, "train": TrainConfig, "prune": PruneConfig,
               "quantize": QuantizeConfig, "cluster": ClusterConfig, "pcqat": PcqatConfig, "convert": ConvertConfig,
               "evaluate": EvaluateConfig, "sensitivity": SensitivityConfig}
# Every top-level key of params.yaml but `experiment` (a preset's name, read by no stage), and its schema. A
# variant's stage reads the group of its own name (variants.py); a technique whose group is only a fine-tuning
# budget (finetune, pqat, cqat) needs no line above.
GROUPS = {**OWN_SCHEMAS, **{variant.stage: Budget for variant in DECLARED if variant.stage not in OWN_SCHEMAS}}
ADAPTERS = {group: TypeAdapter(kind) for group, kind in GROUPS.items()}


def pcqat_needs_clusters_beside_zero(cluster: ClusterConfig, pcqat: PcqatConfig) -> None:
    if cluster.number_of_clusters < MIN_CLUSTERS_PRESERVING_SPARSITY:
        raise UserError(f"cluster.number_of_clusters={cluster.number_of_clusters} is too few for pcqat: "
                        f"sparsity-preserving clustering keeps one centroid at zero, set it to "
                        f"{MIN_CLUSTERS_PRESERVING_SPARSITY} or more")


def freezing_needs_weights(model: ModelConfig, train: TrainConfig) -> None:
    if train.freeze_backbone_epochs and model.weights is None:
        raise UserError(f"train.freeze_backbone_epochs={train.freeze_backbone_epochs} freezes a backbone of random "
                        f"weights: set model.weights to a weights file (or imagenet), or set it to 0")


# Rules between groups, checked when a stage reads all of the groups named.
ACROSS_GROUPS = {("cluster", "pcqat"): pcqat_needs_clusters_beside_zero, ("model", "train"): freezing_needs_weights}


def parse(group: str, raw):
    """One group's raw values (a mapping, or the scalar `seed`) as its typed object; a UserError otherwise."""
    try:
        return ADAPTERS[group].validate_python(raw)
    except ValidationError as err:
        raise UserError(explain(group, err)) from None


def read(params: DictConfig, *groups: str) -> tuple:
    """The named groups of params.yaml, each validated by its schema, in the order asked."""
    require_groups(params, *groups)
    typed = tuple(parse(group, OmegaConf.to_container(params[group], resolve=True)
                        if isinstance(params[group], DictConfig) else params[group]) for group in groups)
    for names, check in ACROSS_GROUPS.items():
        if set(names) <= set(groups):
            check(*(typed[groups.index(name)] for name in names))
    return typed


def explain(group: str, err: ValidationError) -> str:
    """pydantic's first error as the project's one line naming the dotted key and the fix (unknown keys first)."""
    errors = sorted(err.errors(), key=lambda error: error["type"] != "extra_forbidden")
    error = errors[0]
    key = ".".join([group, *map(str, error["loc"])])
    if error["type"] == "extra_forbidden":
        parent, where = key.rpartition(".")[0], error["loc"][:-1]
        unknown = [e["loc"][-1] for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == where]
        return f"{parent} has unknown key(s) {unknown}: use {', '.join(declared_keys(GROUPS[group], where))}"
    refused = (error.get("ctx") or {}).get("error")
    if isinstance(refused, Refused):
        return refused.text(key)
    if error["type"] == "missing":
        return f"{key} is not set: add it to conf/ and compose params.yaml again (`make params`)"
    if error["type"] in ("model_type", "dict_type"):
        return f"{key} must be a mapping of keys, got {error['input']!r}"
    return f"{key}={error['input']!r} is refused ({error['msg']}): fix it in conf/ or params.yaml"


def declared_keys(model: type[BaseModel], where: tuple) -> list[str]:
    """The keys declared at `where` (a path of nested group fields, e.g. ('augment',)) of a group's model."""
    for name in where:
        if isinstance(name, int):   # an item of a list of groups (evaluate.devices.0)
            continue
        annotation = model.model_fields[name].annotation
        model = next(kind for kind in getattr(annotation, "__args__", (annotation,))
                     if isinstance(kind, type) and issubclass(kind, BaseModel))
    return list(model.model_fields)

