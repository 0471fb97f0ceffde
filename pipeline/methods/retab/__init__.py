"""RETAB: weak-shot semantic segmentation via boundary-aware affinity transfer (Zhou et al.,
BMVC 2022), and the baselines of its table (:data:`pipeline.method_table.RETAB`).

The method top to bottom (rules: workflow/rules/retab.smk):

1. CAM network, CAMs, confident labels (shared stages ``pipeline.stages.train_cam`` /
   ``infer_cam`` / ``eval_cam`` / ``confident_labels``), once per dataset.
2. :mod:`.train_boundary`: the boundary network on the fold's base samples (loss L_B);
   :mod:`.infer_boundary`: boundary maps of every train image.
3. :mod:`.train_affinity`: the affinity network, variant ``cam`` (PSA: CAM confident
   labels), ``gt`` (mixed: base samples' ground truth) or ``retab`` (gt + novel pairs only
   off the boundary).
4. :mod:`.propagate`: the PSA random walk (single stage) or RETAB's boundary-aware
   two-stage walk, giving revised CAMs.
5. Pseudo labels, the segmentation net and its evaluation (shared stages
   ``pseudo_labels``, ``train_seg``, ``predict_seg``, ``evaluate``).
6. :mod:`.report`: the paper-form table, the figure, and the mean over folds.
"""
