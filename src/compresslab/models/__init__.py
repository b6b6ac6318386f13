"""Keras models: the zoo, saving and loading, training, tf.distribute, seeding, and the frame of a training stage."""
