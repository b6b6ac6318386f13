"""The result contract: one typed record per evaluated file, encoded and decoded here only (the evaluate
JSON row, variants.csv, the MLflow summary keys, reports/metrics.json), and the one rule that chooses a file
within an accuracy drop. `report`, `compare`, `search` and the registry read rows only through this package.
"""
