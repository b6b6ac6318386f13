"""Stage `cluster`: weight clustering of the baseline while fine-tuning, wrappers stripped before saving.

    dvc repro cluster        # reads params: seed, model (a detector's anchors), train.batch_size, cluster
    dvc exp run -S cluster.number_of_clusters=8  # re-runs cluster, cqat, pcqat and what follows

Outputs: models/clustered.keras; reports/cluster/metrics.json (distinct values per clustered layer next to
the number asked for) and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings, variants
from compresslab.models import training_stage
from compresslab.techniques import clustering
from compresslab.config import load_params
from compresslab.errors import run_main

MAKES = variants.made_by("cluster")   # its variant and parent, declared in compresslab/variants.py


def run(params) -> dict:
    seed, data, model_cfg, train_cfg, cfg = settings.read(params, "seed", "data", "model", "train", "cluster")
    with training_stage.distributed(train_cfg.strategy):  # before any TensorFlow work: see train.strategy
        model, train, val, test = training_stage.begin(data, seed, MAKES.parent, model_cfg)
        result = clustering.cluster(model, cfg, train, val, batch_size=train_cfg.batch_size)
        measurements = {"requested_clusters": result.requested_clusters,
                        "max_unique_values": max(result.channel_unique_values.values(), default=0),
                        "unique_values": result.unique_values, "clustered_layers": len(result.clustered_layers),
                        **result.plan_measurements()}
        for note in result.notes("cluster"):
            print(note)
        print(f"cluster: distinct values per layer {result.unique_values} (asked {result.requested_clusters})")
        return training_stage.finish(MAKES, params, ("seed", "data", "model", "train", "cluster"), result.model, test,
                                     measurements, result.history, strategy_name=train_cfg.strategy)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
