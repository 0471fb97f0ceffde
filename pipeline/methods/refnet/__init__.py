"""Ref-Net: reference semantic segmentation with visual boundary knowledge translation
(IJCAI 2021), on the frozen-encoder features of the few-shot branch.

The method top to bottom (rules: workflow/rules/refnet.smk):

1. features: the shared cache of stage crnet_features (``work/<dataset>/crnet/features/{train,val}.pt``,
   the frozen ImageNet encoder of :mod:`pipeline.data.fewshot_features`), reused, not recomputed.
2. :mod:`.train_refnet`: the setting of one job (targets, K references, S, O;
   :func:`pipeline.refnet_training.draw_setting`) and the RSM + BKTM training
   (:mod:`pipeline.models.refnet`, :func:`pipeline.refnet_training.train_refnet`); the critics'
   Wasserstein estimates per step in its history.
3. :mod:`.test_refnet`: per val image and target category of its image-level labels, the
   mask from that category's reference; combined into {background, targets}; MPA, MIoU,
   FWIoU, novel mIoU from the shared confusion matrix.
4. :mod:`.report`: results/<dataset>/refnet_fold<k> (and refnet_single_<class>'s figure);
   :mod:`.tables`: refnet_all (folds and R(K)), refnet_ablation, refnet_critics, refnet_single_<class>,
   refnet_select (the critic setting chosen on base-class pseudo-targets of scopes select<k>).

:mod:`.results` holds what the report stages share.
"""
