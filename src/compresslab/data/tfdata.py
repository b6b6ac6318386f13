"""tf.data pipelines that feed Keras: the prepared shards streamed, shuffled in a bounded buffer, batched,
optionally augmented, prefetched. In-memory (images, labels) arrays go through the same steps (unit tests and
in-process tools), so there is one input path for every fit, evaluation and prediction.

Detection splits (a StoredSplit whose meta says "task": "detection", or an in-memory (images, list of (n, 5)
box rows) pair) give (image, boxes) elements: the training code's `targets` function turns each into the model's
targets before batching; without it, batches pad the boxes with rows of -1 (Keras `predict`, calibration).

Order is deterministic: shards are read in stored order, the shuffle and augmentation draw from the seeded
global state (`seeding.seed_everything` runs before), and every map keeps element order.
"""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from compresslab.data import shards
from compresslab.settings import AugmentConfig

PADDING = -1.0  # the value of the box rows that pad a detection batch


def is_detection(split) -> bool:
    """Whether `split` (a StoredSplit or an in-memory pair) holds boxes rather than labels."""
    if isinstance(split, shards.StoredSplit):
        return split.task == "detection"
    y = split[1]
    return isinstance(y, (list, tuple)) and len(y) > 0 and np.ndim(y[0]) == 2


def pipeline(split, batch_size: int, *, training: bool = False,
             targets: Callable[[tf.Tensor, tf.Tensor], tuple] | None = None) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], int64 labels) from a `shards.StoredSplit` or an (x, y) pair.

    With `training`, elements are shuffled in a buffer of the split's `shuffle_buffer` (reshuffled each
    epoch) and augmented as its `augment` says; otherwise they come in stored order, untouched.

    A detection split (see `is_detection`) gives (image, boxes) elements, boxes float32 (n, 5). `targets`, a
    TensorFlow function (image, boxes) -> (image, y), is mapped before batching (the training code encodes the
    boxes against its anchors there); without it, batches are (images, boxes padded with rows of -1).
    """
    if is_detection(split):
        if targets is None and isinstance(split, shards.StoredSplit):
            targets = split.targets
        return detection_pipeline(split, batch_size, training=training, targets=targets)
    if isinstance(split, shards.StoredSplit):
        elements = stored_elements(split, decode_record)
        buffer, augment = split.shuffle_buffer, split.augment
    else:
        x, y = split
        elements = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y, np.int64)))
        buffer, augment = len(y), None
    if training:
        elements = in_training_order(elements, min(buffer, max(shards.count(split), 1)), augment,
                                     lambda element, draw: (augmented(element[0], draw, augment), element[1]))
    return with_sharding(elements.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE))


def detection_pipeline(split, batch_size: int, *, training: bool = False,
                       targets: Callable[[tf.Tensor, tf.Tensor], tuple] | None = None) -> tf.data.Dataset:
    """`pipeline` for a detection split: (image, boxes) elements, augmented boxes and all, then `targets`."""
    if isinstance(split, shards.StoredSplit):
        elements = stored_elements(split, decode_detection_record)
        buffer, augment = split.shuffle_buffer, split.augment
    else:
        x, rows = split
        counts = np.asarray([len(r) for r in rows], np.int64)
        # Every box in one constant, each image slicing its own rows: no Python generator in the loop (slices
        # of a RaggedTensor would stay ragged, which padded_batch refuses).
        flat = tf.constant(np.concatenate(rows).astype(np.float32).reshape(-1, shards.BOX_COLUMNS))
        starts = np.cumsum(counts) - counts
        elements = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), starts, counts)).map(
            lambda image, start, n: (image, flat[start:start + n]))
        buffer, augment = len(rows), None
    if training:
        elements = in_training_order(elements, min(buffer, max(shards.count(split), 1)), augment,
                                     lambda element, draw: augmented_detection(element[0], element[1], draw, augment))
    if targets is not None:
        batches = elements.map(targets, num_parallel_calls=tf.data.AUTOTUNE).batch(int(batch_size))
    else:
        batches = elements.padded_batch(int(batch_size), padded_shapes=(elements.element_spec[0].shape, [None, 5]),
                                        padding_values=(0.0, PADDING))
    return with_sharding(batches.prefetch(tf.data.AUTOTUNE))


def stored_elements(split: shards.StoredSplit, decode: Callable) -> tf.data.Dataset:
    """The split's records in stored order, each decoded by decode(record, image shape)."""
    shape = split.image_shape
    records = tf.data.TFRecordDataset([str(path) for path in split.shards], compression_type="GZIP")
    return records.map(lambda record: decode(record, shape), num_parallel_calls=tf.data.AUTOTUNE)


def in_training_order(elements: tf.data.Dataset, buffer: int, augment: AugmentConfig | None,
                      augment_element: Callable) -> tf.data.Dataset:
    """Shuffled in a bounded buffer (reshuffled each epoch), then, when `augment` augments, each element passed
    through augment_element(element, draw) with its own random draw, the task's augmentation."""
    elements = elements.shuffle(buffer, reshuffle_each_iteration=True)
    if augment is not None and augment.augmenting:
        randoms = tf.data.Dataset.random(rerandomize_each_iteration=True)
        elements = tf.data.Dataset.zip((elements, randoms)).map(augment_element, num_parallel_calls=tf.data.AUTOTUNE)
    return elements


def with_sharding(batches: tf.data.Dataset) -> tf.data.Dataset:
    """The pipeline's options: how several workers share it."""
    options = tf.data.Options()
    # Several workers (train.strategy=multi_worker) each read every shard and keep their share of the batches:
    # the sample has one or two shards per split, fewer than workers, which sharding by file cannot serve.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def decode_detection_record(record: tf.Tensor, shape: tuple[int, int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """One detection record (see `shards`) to (float32 image in [0, 1], float32 (n, 5) boxes), as NumPy reads."""
    count = tf.cast(tf.io.decode_raw(tf.strings.substr(record, 0, shards.COUNT_BYTES), tf.int64,
                                     little_endian=True)[0], tf.int32)
    box_bytes = count * shards.BOX_BYTES
    boxes = tf.io.decode_raw(tf.strings.substr(record, shards.COUNT_BYTES, box_bytes), tf.float32,
                             little_endian=True)
    pixels = tf.io.decode_raw(tf.strings.substr(record, shards.COUNT_BYTES + box_bytes, -1), tf.uint8)
    image = tf.cast(tf.reshape(pixels, shape), tf.float32) * np.float32(shards.PIXEL_SCALE)
    return image, tf.reshape(boxes, [-1, shards.BOX_COLUMNS])


def augmented_detection(image: tf.Tensor, boxes: tf.Tensor, draw: tf.Tensor,
                        cfg: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """A random left-right flip (the boxes mirrored with the image), shift and brightness change of one example,
    from stateless seeds derived from `draw`, as `augmented` does for classification.

    The shift pads by `crop` pixels of black (a reflected border would show objects without boxes) and crops
    back at a random offset, moving the boxes with the image; a box pushed partly out is clipped to the image,
    one pushed wholly out keeps zero area, which the training targets ignore."""
    seeds = tf.random.experimental.stateless_split(tf.stack([draw, tf.constant(0, tf.int64)]), 3)
    if cfg.flip:
        flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
        mirrored = tf.stack([boxes[:, 0], boxes[:, 1], 1.0 - boxes[:, 4], boxes[:, 3], 1.0 - boxes[:, 2]], axis=1)
        image = tf.where(flip, tf.image.flip_left_right(image), image)
        boxes = tf.where(flip, mirrored, boxes)
    if cfg.crop:
        pad, size = int(cfg.crop), tf.cast(tf.shape(image)[0], tf.float32)
        offset = tf.random.stateless_uniform([2], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.slice(padded, tf.concat([offset, [0]], 0), tf.shape(image))
        shift = (float(pad) - tf.cast(offset, tf.float32)) / size    # (dy, dx) as fractions of the side
        corners = tf.clip_by_value(boxes[:, 1:] + tf.tile(shift, [2]), 0.0, 1.0)
        boxes = tf.concat([boxes[:, :1], corners], axis=1)
    if cfg.brightness:
        image = tf.clip_by_value(tf.image.stateless_random_brightness(image, float(cfg.brightness), seeds[2]),
                                 0.0, 1.0)
    return image, boxes


def decode_record(record: tf.Tensor, shape: tuple[int, int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """One record (see `dataset`) to (float32 image in [0, 1], int64 label), the same numbers NumPy reads."""
    label = tf.io.decode_raw(tf.strings.substr(record, 0, shards.LABEL_BYTES), tf.int64, little_endian=True)[0]
    pixels = tf.io.decode_raw(tf.strings.substr(record, shards.LABEL_BYTES, -1), tf.uint8)
    image = tf.cast(tf.reshape(pixels, shape), tf.float32) * np.float32(shards.PIXEL_SCALE)
    return image, label


def augmented(image: tf.Tensor, draw: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """A random left-right flip, pad-and-crop and brightness shift of one image, each from its own stateless
    seed derived from `draw` (one seeded random number per element), so a run repeats exactly."""
    seeds = tf.random.experimental.stateless_split(tf.stack([draw, tf.constant(0, tf.int64)]), 3)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if cfg.crop:
        pad = int(cfg.crop)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, tf.shape(image), seeds[1])
    if cfg.brightness:
        image = tf.clip_by_value(tf.image.stateless_random_brightness(image, float(cfg.brightness), seeds[2]),
                                 0.0, 1.0)
    return image
