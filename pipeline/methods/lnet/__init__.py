"""L-Net / P-Net: transferable semi-supervised semantic segmentation (Xiao et al., AAAI
2018), with the rows of :data:`pipeline.method_table.LNET`.

The method top to bottom (rules: workflow/rules/lnet.smk):

1. :mod:`.train_lnet`: the class-agnostic L-Net (objectness) on the strong categories'
   samples; :mod:`.infer_lnet`: its object map M of every weak image.
2. CAMs of the weak images (shared stages ``pipeline.stages.train_cam`` / ``infer_cam``).
3. :mod:`.self_diffusion`: SLIC superpixels, CAM seeds, L-Net background seeds and the
   harmonic random-walk diffusion (Eq. 2), giving the pseudo labels L_w.
4. The segmentation net on GT (strong) + L_w (weak) (shared stage ``train_seg``).
5. :mod:`.train_pnet`: the adversarial P-Net, pre-trained on strong categories, then
   fine-tuned with the segmentation net (Eqs. 3-5).
6. :mod:`.report`: the paper-form table (all / strong / weak mIoU) and its figure.
"""
