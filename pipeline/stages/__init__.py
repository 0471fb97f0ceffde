"""One module per DAG stage: ``python -m pipeline.stages.NAME --help``."""
