"""Data pipeline stages: synthetic data, queries, teacher capture, dataset build, data quality."""
