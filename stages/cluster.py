"""Stage `cluster`: weight clustering of the baseline while fine-tuning, wrappers stripped before saving.

    dvc repro cluster        # reads params: seed, train.batch_size, cluster
    dvc exp run -S cluster.number_of_clusters=8  # re-runs cluster, cqat, pcqat and what follows

Outputs: models/clustered.keras; reports/cluster/metrics.json (distinct values per clustered layer next to
the number asked for) and history.csv.
"""

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import stage
from compresslab.techniques import clustering
from compresslab.config import load_params
from compresslab.errors import run_main


def run(params) -> dict:
    cfg = params.cluster
    clustering.validate_cluster_config(cfg)
    with stage.distributed(params):  # before any TensorFlow work: see train.strategy
        model, train, val, test = stage.begin(params, "baseline")
        result = clustering.cluster(model, cfg, train, val, batch_size=params.train.batch_size)
        measurements = {"requested_clusters": result.requested_clusters,
                        "max_unique_values": max(result.channel_unique_values.values(), default=0),
                        "unique_values": result.unique_values, "clustered_layers": len(result.clustered_layers),
                        **result.plan_measurements()}
        for note in result.notes("cluster"):
            print(note)
        print(f"cluster: distinct values per layer {result.unique_values} (asked {result.requested_clusters})")
        return stage.finish("cluster", params, ("seed", "train", "cluster"), result.model, "clustered", test,
                            measurements, result.history)


if __name__ == "__main__":
    run_main(lambda: run(load_params()), skip_teardown=True)
