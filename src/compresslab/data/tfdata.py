"""tf.data pipelines that feed Keras: the prepared shards streamed, shuffled in a bounded buffer, batched,
optionally augmented, prefetched. In-memory (images, labels) arrays go through the same steps (unit tests and
in-process tools), so there is one input path for every fit, evaluation and prediction.

Order is deterministic: shards are read in stored order, the shuffle and augmentation draw from the seeded
global state (`seeding.seed_everything` runs before), and every map keeps element order.
"""

import numpy as np
import tensorflow as tf

from compresslab.data import shards
from compresslab.settings import AugmentConfig


def pipeline(split, batch_size: int, *, training: bool = False) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], int64 labels) from a `shards.StoredSplit` or an (x, y) pair.

    With `training`, elements are shuffled in a buffer of the split's `shuffle_buffer` (reshuffled each
    epoch) and augmented as its `augment` says; otherwise they come in stored order, untouched.
    """
    if isinstance(split, shards.StoredSplit):
        shape = split.image_shape
        records = tf.data.TFRecordDataset([str(path) for path in split.shards], compression_type="GZIP")
        elements = records.map(lambda record: decode_record(record, shape), num_parallel_calls=tf.data.AUTOTUNE)
        buffer, augment = split.shuffle_buffer, split.augment
    else:
        x, y = split
        elements = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y, np.int64)))
        buffer, augment = len(y), None
    if training:
        elements = elements.shuffle(min(buffer, max(shards.count(split), 1)), reshuffle_each_iteration=True)
        if augment is not None and augment.augmenting:
            randoms = tf.data.Dataset.random(rerandomize_each_iteration=True)
            elements = tf.data.Dataset.zip((elements, randoms)).map(
                lambda element, draw: (augmented(element[0], draw, augment), element[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
    batches = elements.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Several workers (train.strategy=multi_worker) each read every shard and keep their share of the batches:
    # the sample has one or two shards per split, fewer than workers, which sharding by file cannot serve.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


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
