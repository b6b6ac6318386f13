"""The detection task: anchors, training targets and losses, decoding with non-maximum suppression, and COCO
scoring. What differs from classification lives here; the stages, conversion and timing are shared."""
