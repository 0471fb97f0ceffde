"""Data layer: everything between the files on disk and the training loops.

- ``voc``             :class:`~pipeline.data.voc.VOCDataset`, the reader for every dataset
                      (VOC 2012 + SBD, CamVid, the embedded default), all in VOC layout
- ``labels``          image-level labels derived from masks, cached as JSON
- ``folds``           weak-shot folds: novel/base classes and novel/base train samples
- ``augment``         random scale/crop/flip, resizing, ImageNet normalization
- ``boundary_labels`` boundary-net targets from masks (VOC outline band or label changes)

Submodules are imported explicitly (``from pipeline.data.voc import VOCDataset``) so that
importing one does not pull in the others' dependencies.
"""
