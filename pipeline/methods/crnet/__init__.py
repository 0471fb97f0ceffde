"""CRNet: Cross-Reference Networks for few-shot segmentation (Liu et al., CVPR 2020), on the
shared few-shot test bed (:mod:`pipeline.data.episodes`, :mod:`pipeline.metrics.episodic`).

The method top to bottom (rules: workflow/rules/crnet.smk):

1. :mod:`.crnet_features`: the frozen siamese encoder's features of the train and val
   splits, once (the encoder never trains: CANet/CRNet).
2. :mod:`.train_crnet`: CRNet (:mod:`pipeline.models.crnet`) on pairs of the fold's base
   classes (train split), the epoch chosen on held-out base-class episodes.
3. :mod:`.test_crnet`: CRNet on every episodes file (k-shot by probability fusion; the
   refinement-iterations scores in the same pass), the k-shot finetune vs fusion on a
   subset, and the training-free prototype floor (:mod:`pipeline.fewshot`).
4. :mod:`.report`: results/<dataset>/crnet_fold<k> (tables + figure), crnet_all (folds),
   crnet_ablation (one training job per variant of ``crnet.ablation.variants``).
5. :mod:`.cross_dataset`: results/<test>/crnet_from_<train>_fold<k> (a fold's CRNet on another
   dataset's episodes, seen vs unseen test classes) and results/crnet_cross.

6. TPC + CRC (:mod:`pipeline.tpc_crc`): train_crnet variants of ``crnet.tpc_crc.variants``;
   :mod:`.make_hpartitions`: the H-partition episode files L0-L7 (:mod:`pipeline.hpartitions`);
   test_crnet ``--stress`` / ``--partial``; :mod:`.report_tpc_crc`: results/<dataset>/
   crnet_tpc_crc_fold<k>, crnet_tpc_crc_all, crnet_tpc_crc_components.

:mod:`.results` holds what the report stages share (``--eval`` entries, seed tables, the result writer).
"""
