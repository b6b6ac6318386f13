"""Which tf.distribute strategy trains a stage (`train.strategy`), and what the run should record about it.

    default        one device, no strategy (TensorFlow's default)
    mirrored       synchronous data parallelism over this machine's GPUs (one CPU device when there is none)
    multi_worker   synchronous data parallelism over several machines, from the standard TF_CONFIG

`train.batch_size` is the global batch: each of N replicas gets batch_size / N per step. Every worker of a
multi_worker run executes the same stage script with its own TF_CONFIG; only the chief writes the model,
the reports and the MLflow run (the others train in lockstep and save to a temporary folder, as Keras asks).
"""

import json
import os
from collections.abc import Mapping

from compresslab.errors import UserError


def cluster_config() -> dict:
    """TF_CONFIG parsed and checked: {"cluster": {"worker": ["host:port", ...], ...}, "task": {"type", "index"}}."""
    raw = os.environ.get("TF_CONFIG")
    fix = ('set TF_CONFIG on every worker to JSON such as {"cluster": {"worker": ["host1:port", "host2:port"]}, '
           '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise UserError(f"train.strategy=multi_worker needs the TF_CONFIG environment variable: {fix}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos}): {fix}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, Mapping) or not cluster or not isinstance(task, Mapping):
        raise UserError(f"TF_CONFIG needs a 'cluster' and a 'task' entry: {fix}")
    members = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG task {task!r} is not a member of its cluster {dict(cluster)}: {fix}")
    return config


def make_strategy(name: str):
    """The tf.distribute strategy for `train.strategy` (one of settings.STRATEGIES). Call it before any other
    TensorFlow work: a multi-worker strategy must set up its collective runtime first, and TF_CONFIG is checked
    here, before TensorFlow starts."""
    if name == "multi_worker":
        cluster_config()
    import tensorflow as tf  # noqa: PLC0415  (this module stays importable without TensorFlow for validation)

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs: always, except on a non-chief multi-worker task."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def describe(name: str, strategy) -> dict:
    """What the MLflow run records: the strategy, its replicas and the devices that trained."""
    resolver = getattr(strategy, "cluster_resolver", None)
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list: it runs where TensorFlow places ops
        import tensorflow as tf  # noqa: PLC0415

        devices = [device.name for device in tf.config.list_logical_devices()]
    description = {"strategy": name, "replicas": int(strategy.num_replicas_in_sync), "devices": devices}
    if resolver is not None and resolver.task_type:
        description.update(workers=sum(len(v) for k, v in resolver.cluster_spec().as_dict().items()
                                       if k in ("chief", "worker")),
                           task=f"{resolver.task_type}:{resolver.task_id}")
    return description
