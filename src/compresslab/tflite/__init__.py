"""TFLite files: converting Keras models, reading the flatbuffer, running and timing it with LiteRT.

Only `converter` imports TensorFlow; everything else here needs LiteRT and NumPy alone, so stages that only
read .tflite files start in a fraction of a second."""
