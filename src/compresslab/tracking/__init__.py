"""MLflow runs and their DVC lineage."""
