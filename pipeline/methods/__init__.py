"""One folder per method (paper), each readable top to bottom: its own stages and its report.

- ``pipeline.methods.retab``  RETAB weak-shot segmentation (boundary net, mixed-supervised
  affinity net, boundary-aware two-stage random walk) and its baselines
- ``pipeline.methods.lnet``   L-Net / P-Net transferable semi-supervised segmentation

The stages several methods use (data, CAM, pseudo labels, the segmentation net, evaluate,
report_all) are :mod:`pipeline.stages`; the table of methods, rows and targets is
:mod:`pipeline.method_table`. A method's stage never imports another stage, and the
shared library never imports a method (tests/test_import_rules.py).
"""
