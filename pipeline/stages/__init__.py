"""The stages several methods use (data, CAM, pseudo labels, segmentation, evaluate,
report_all): ``python -m pipeline.stages.NAME --help``. A method's own stages are in
:mod:`pipeline.methods`."""
