"""From measured figures to what a researcher reads: quality metrics, statistics, tables, plots, the report
and the comparison across experiments."""
