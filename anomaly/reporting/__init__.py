"""anomaly.report: one table and plots for a sweep or a folder of runs."""
