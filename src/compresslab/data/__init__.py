"""The data set: the bundled sample, prepare (split, shards), and reading the shards (NumPy, tf.data)."""
