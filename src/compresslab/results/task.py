"""What a task measures a file by: its primary quality figure on the test and on the validation split.

Classification ranks files by accuracy; a second task (object detection: mAP) declares its own figures here,
and the selection rule, `compare`, `search` and the registry follow without change.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """The figures a choice between files is made on.

    quality: the record field of the test split's primary figure (a fraction: 1.0 is perfect).
    validation_quality: the same figure on the validation split, which choices are decided on so that the
      test split stays held out.
    higher_is_better: whether a larger figure is the better file.
    """
    name: str
    quality: str
    validation_quality: str
    higher_is_better: bool = True

    def figure(self, split: str) -> str:
        """The record field of the primary figure on `split` ('val' or 'test')."""
        return self.validation_quality if split == "val" else self.quality


CLASSIFICATION = Task("classification", quality="accuracy", validation_quality="val_accuracy")
DETECTION = Task("detection", quality="map", validation_quality="val_map")
TASKS = {task.name: task for task in (CLASSIFICATION, DETECTION)}


def task_of(records) -> Task:
    """The task whose figures `records` hold (records or rows of one run): detection when any holds an mAP."""
    for record in records:
        figures = record if isinstance(record, dict) else record.__dict__
        if figures.get(DETECTION.quality) is not None or figures.get(DETECTION.validation_quality) is not None:
            return DETECTION
    return CLASSIFICATION
