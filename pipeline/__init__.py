"""Weak-shot / few-shot segmentation pipeline: one package, one module per DAG stage.

Layout (read top to bottom):
- ``pipeline.config``       params.yaml loading, per-dataset overrides, schema validation
- ``pipeline.errors``       the one error type stages raise for bad input, and the CLI wrapper
- ``pipeline.stage``        the setup every stage shares (command line, threads, device)
- ``pipeline.io``           atomic writes (temporary name, then rename), file checks
- ``pipeline.data``         VOC-layout reader, image-level labels, folds, label/probability PNGs,
                            embedded dataset
- ``pipeline.models``       backbone and heads; ``pipeline.segmentation`` the segmentation net
                            every method trains and its feature cache
- ``pipeline.propagation``  random walks and diffusion
- ``pipeline.metrics``      confusion matrix and IoU family
- ``pipeline.method_table`` the methods, their table rows and results targets
- ``pipeline.layout``       where the shared stages put their artifacts
- ``pipeline.stages``       ``python -m pipeline.stages.NAME``: the stages several methods use
- ``pipeline.methods``      one folder per method: ``python -m pipeline.methods.<method>.NAME``
"""

__version__ = "0.1.0"
