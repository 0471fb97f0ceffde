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

import os

__version__ = "0.1.0"

# OpenMP threads that sleep when idle, set here because this runs first in every stage:
# ``python -m pipeline.<...>.<stage>`` imports this package before the stage module, so
# before torch loads its OpenMP runtime (libgomp reads OMP_WAIT_POLICY once, when torch is
# imported; os.environ writes reach it). The snakemake process imports the package too
# (workflow/rules/common.smk), so every job inherits the variable. By default an idle
# libgomp thread spins (300k iterations) at the end of every parallel region: free on an
# idle machine, but beside other busy processes the spinners take the cores the working
# threads need. The 2-thread sparse walk (256 small parallel products) suffers most:
# benchmarks/propagation_benchmark.py --load 2 --wait-policy both on the shared 2-core
# machine measured 0.22-2.7 s with the default vs 0.10-0.14 s with PASSIVE (beside the
# machine's other jobs), 0.63-1.8 s vs 0.10-0.27 s beside a 2-thread load. The wait policy
# changes how idle threads wait, not how work is split: results are bit-identical.
# An explicit value wins; an empty one (OMP_WAIT_POLICY=) keeps the runtime's own default.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
elif not os.environ["OMP_WAIT_POLICY"].strip():
    del os.environ["OMP_WAIT_POLICY"]  # libgomp rejects an empty value with a warning
