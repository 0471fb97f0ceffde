"""Weak-shot / few-shot segmentation pipeline: one package, one module per DAG stage.

Layout (read top to bottom):
- ``pipeline.config``      params.yaml loading, per-dataset overrides, schema validation
- ``pipeline.errors``      the one error type stages raise for bad input, and the CLI wrapper
- ``pipeline.io``          atomic writes (temporary name, then rename)
- ``pipeline.data``        VOC-layout reader, image-level labels, folds, embedded dataset
- ``pipeline.models``      backbone and heads
- ``pipeline.propagation`` random walks and diffusion
- ``pipeline.metrics``     confusion matrix and IoU family
- ``pipeline.stages``      ``python -m pipeline.stages.NAME``: one module per DAG stage
"""

__version__ = "0.1.0"
