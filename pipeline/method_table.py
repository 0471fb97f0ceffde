"""The table of methods, in one place.

A *method* is a paper (``retab``, ``lnet``, ``crnet``, ``refnet``); a *row*
is one line of its results table (``cam``, ``cam_rw``, ..., ``oracle``); a *target* is a
``results/<dataset>/<target>_fold<k>`` directory that shows some rows of one method
(``retab`` shows every RETAB row, ``cam`` only the CAM row; ``pnet`` shows the four
L-Net / P-Net rows). The rules (workflow/rules/*.smk), the methods' report stages and
report_all all read this table; it names each method's report stage by its module string,
so this library module imports no method code.

Rows that train a segmentation net through the shared stages (train_seg / predict_seg)
say what supervises it: ``pseudo`` (pseudo labels for every train image), ``mixed``
(ground truth for base samples, pseudo labels for novel samples) or ``gt`` (ground truth
everywhere); ``pseudo_source`` names the pseudo labels (``None``: the row has none), and
``fold_dependent`` says whether the net depends on the fold: sees its base-sample pixel labels,
or learns from labels whose parameters are chosen per fold (then it lives under
``work/<dataset>/fold<k>/``, else under ``work/<dataset>/shared/``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Row:
    title: str
    pseudo_source: str | None = None
    supervision: str | None = None
    fold_dependent: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    rows: Mapping[str, Row]
    targets: Mapping[str, tuple[str, ...]]  # results/<target>_fold<k> -> the rows it shows
    report_stage: str  # module run as `python -m <report_stage>` to build a target
    paper: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)

    def pseudo_rows(self) -> tuple[str, ...]:
        """Rows whose pseudo labels are scored (on the fold's train novel / weak samples)."""
        return tuple(row for row, spec in self.rows.items() if spec.pseudo_source is not None)

    def titles(self) -> dict[str, str]:
        return {row: spec.title for row, spec in self.rows.items()}


_RETAB_ROWS = {
    # CAM + the background threshold best on the fold's base samples, every train image
    "cam": Row("CAM", pseudo_source="cam", supervision="pseudo"),
    # + PSA random walk, affinity net from CAM confident labels only
    "cam_rw": Row("CAM+RW", pseudo_source="rw_cam", supervision="pseudo"),
    # cam_rw pseudo labels for novel samples, ground truth for base samples
    "cam_rw_seggt": Row("CAM+RW(seggt)", pseudo_source="rw_cam", supervision="mixed"),
    # + ground-truth affinity pairs for base samples (single-stage walk)
    "cam_rw_affgt_seggt": Row("CAM+RW(affgt+seggt)", pseudo_source="rw_gt", supervision="mixed"),
    # boundary-aware mixed affinity + two-stage random walk, ground truth for base samples
    "retab": Row("CAM+RETAB", pseudo_source="retab", supervision="mixed"),
    # ground truth everywhere (upper bound)
    "oracle": Row("Fully Oracle", pseudo_source=None, supervision="gt", fold_dependent=False),
}

RETAB = Method(
    name="retab",
    title="RETAB weak-shot comparison",
    paper="Zhou et al., BMVC 2022",
    rows=_RETAB_ROWS,
    # results/<row>_fold<k> shows one row alone, except `retab`: its target compares every
    # row (and draws the figure).
    targets={**{row: (row,) for row in _RETAB_ROWS}, "retab": tuple(_RETAB_ROWS)},
    report_stage="pipeline.methods.retab.report",
)

LNET = Method(
    name="lnet",
    title="L-Net / P-Net (transferable semi-supervised)",
    paper="Xiao et al., AAAI 2018",
    rows={
        # the shared CAM pseudo labels for weak images, ground truth for strong images
        "cam_seggt": Row("CAM-only pseudo labels", pseudo_source="cam", supervision="mixed"),
        # self-diffusion pseudo labels L_w for weak images, ground truth for strong images
        "lnet": Row("L-Net (self-diffusion)", pseudo_source="self_diffusion", supervision="mixed"),
        # the lnet row's net fine-tuned with the P-Net (stage train_pnet)
        "pnet": Row("P-Net"),
        # RETAB's fully supervised net (work/<dataset>/shared/seg/oracle), scored on the split
        "oracle": Row("Fully Oracle", supervision="gt", fold_dependent=False),
    },
    targets={"lnet": ("cam_seggt", "lnet", "oracle"), "pnet": ("cam_seggt", "lnet", "pnet", "oracle")},
    report_stage="pipeline.methods.lnet.report",
)

CRNET = Method(
    name="crnet",
    title="CRNet few-shot segmentation",
    paper="Liu et al., CVPR 2020",
    rows={
        # CRNet trained on the fold's base classes, k-shot by probability fusion
        "crnet": Row("CRNet"),
        # CRNet trained with the TPC + CRC scheme (variant tpc_crc of crnet.tpc_crc.variants)
        "crnet_tpc_crc": Row("CRNet + TPC + CRC"),
        # training-free masked-average-pooling prototypes + cosine (PANet without alignment)
        "prototype": Row("Prototype floor (PANet, no alignment)", fold_dependent=False),
    },
    # results/crnet_tpc_crc_fold<k> (pipeline.methods.crnet.report_tpc_crc) shows both CRNets
    targets={"crnet": ("crnet", "prototype"), "crnet_tpc_crc": ("crnet", "crnet_tpc_crc", "prototype")},
    report_stage="pipeline.methods.crnet.report",
)

REFNET = Method(
    name="refnet",
    title="Ref-Net reference segmentation",
    paper="IJCAI 2021",
    rows={
        # RSM + BKTM with K references per target (novel) class, full model, training seed 0
        "refnet": Row("Ref-Net"),
    },
    targets={"refnet": ("refnet",)},
    report_stage="pipeline.methods.refnet.report",
)

METHODS: dict[str, Method] = {method.name: method for method in (RETAB, LNET, CRNET, REFNET)}


def method_of_target(target: str) -> Method:
    """The method whose report builds ``results/<target>_fold<k>`` (KeyError if none)."""
    for method in METHODS.values():
        if target in method.targets:
            return method
    raise KeyError(target)


def all_targets() -> list[str]:
    return [target for method in METHODS.values() for target in method.targets]
