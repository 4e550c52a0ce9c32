"""The app layer: the CLI, the pipeline runner, Airflow glue and the run summary.

It alone wires the stages together; the kernel (``fitsense``) and the stage
packages never import it.
"""
