"""Compression techniques on Keras models (TFMOT): pruning, quantization-aware training, weight
clustering and their collaborative (preserving) combinations."""
