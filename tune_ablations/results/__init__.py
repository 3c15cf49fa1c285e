"""Layer 3, results: `Experiment` (a sweep's folder, local or remote: every path inside it),
results as pandas DataFrames, statistics (paired tests, the sequential seeds procedure,
learning-rate fits, scaling fits), the report and its plots, and export. Imports `spec` and
`training`; needs no running Ray (and never imports it)."""
