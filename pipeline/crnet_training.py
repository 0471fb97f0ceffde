"""CRNet training and episode scoring, shared by the few-shot stages (train_crnet, the
episodic test's k-shot finetune; TPC + CRC, :mod:`pipeline.tpc_crc`, as a training scheme): variants, training
pairs from cached features, the loss, the optimizer, scoring episodes.
Stage docs: :mod:`pipeline.methods.crnet.train_crnet`.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import section
from pipeline.data.fewshot_features import FeatureStore, feature_mosaic
from pipeline.errors import PipelineError
from pipeline.fewshot import binary_prediction
from pipeline.losses import segmentation_ce
from pipeline.metrics.episodic import EpisodeIoUAccumulator
from pipeline.models.crnet import LEGACY, SWITCH_DEFAULTS, SWITCHES, CRNet, episode_probabilities, upsample_logits
from pipeline.tpc_crc import tpc_item
from pipeline.training import load_model

FULL = "full"
TRAINING_SEED = re.compile(r"(?P<variant>.+)_seed(?P<seed>\d+)")


def split_training_seed(variant: str) -> tuple[str, int | None]:
    """``"full_seed2"`` -> ``("full", 2)``; ``"full"`` -> ``("full", None)``: a variant trained
    with another training seed is its own job and directory (the seed spread of a claim)."""
    match = TRAINING_SEED.fullmatch(variant)
    return (match["variant"], int(match["seed"])) if match else (variant, None)


def variant_settings(params: dict, variant: str) -> dict:
    """``{switch: value, ..., "novel_images": ..., "tpc": ..., "crc": ...}`` of a variant
    (``full``: the defaults; a key of ``crnet.ablation.variants`` or of
    ``crnet.tpc_crc.variants``: those values; a ``_seed<n>`` suffix changes the training seed only)."""
    variant, _ = split_training_seed(variant)
    settings = dict(SWITCH_DEFAULTS)
    settings["novel_images"] = section(params, "crnet.train.novel_images")
    settings.update(tpc=False, crc=False, mosaic=float(params["crnet"].get("train", {}).get("mosaic", 0.0)))
    if variant != FULL:
        variants = {**(section(params, "crnet.ablation.variants") or {}),
                    **(params["crnet"].get("tpc_crc", {}).get("variants") or {})}
        if variant not in variants:
            raise PipelineError("--variant", f"'{variant}' is neither {FULL} nor a key of crnet.ablation.variants "
                                f"or crnet.tpc_crc.variants (known: {', '.join(sorted(variants)) or 'none'})")
        settings.update(variants[variant])
    return settings


def build_crnet(params: dict, level_channels, settings: dict) -> CRNet:
    return CRNet(level_channels, hidden=int(section(params, "crnet.hidden")),
                 **{name: settings[name] for name in SWITCHES})


def holds(counts: Sequence[int], classes: Sequence[int], min_pixels: int) -> bool:
    """The image (its pixel counts) holds one of ``classes`` with >= ``min_pixels`` px."""
    return any(counts[c] >= min_pixels for c in classes)


def touches(counts: Sequence[int], classes: Sequence[int]) -> bool:
    """The image has any pixel of one of ``classes``."""
    return any(counts[c] > 0 for c in classes)


def select_classes(pixel_counts: Mapping[str, Sequence[int]], ids: Sequence[str], base_classes: Sequence[int],
                   novel_classes: Sequence[int], count: int, seed: int, fold, min_pixels: int) -> list[int]:
    """The base classes that play novel for epoch selection (``crnet.select.classes`` of them):
    a sample (numpy rng seeded ``[seed, fold]``, as ``refnet.select``) of the base classes that
    are in >= 2 train images without any novel pixel (a 1-shot episode needs two). Fewer
    eligible classes than ``count + 1`` (one must stay to train on) is one line naming the key."""
    novel = [int(c) for c in novel_classes]
    eligible = sorted(int(c) for c in base_classes
                      if sum(1 for i in ids if pixel_counts[i][c] >= min_pixels
                             and not touches(pixel_counts[i], novel)) >= 2)
    if len(eligible) < count + 1 or len(base_classes) < count + 1:
        raise PipelineError("params.yaml", f"crnet.select.classes = {count} needs {count + 1} base classes in >= 2 "
                            f"train images without a novel pixel (one at least to train on); fold {fold} has "
                            f"{len(eligible)}")
    fold_key = fold if isinstance(fold, int) else 0
    rng = np.random.default_rng([int(seed), int(fold_key)])
    return sorted(eligible[j] for j in rng.choice(len(eligible), size=count, replace=False))


def protocol_images(pixel_counts: Mapping[str, Sequence[int]], ids: Sequence[str], train_classes: Sequence[int],
                    select: Sequence[int], novel_classes: Sequence[int], novel_images: str,
                    min_pixels: int) -> tuple[list[str], list[str]]:
    """``(training ids, selection ids)`` of the train split, in the order of ``ids``.

    Selection images hold a selection class (>= ``min_pixels``) and no novel pixel at all: the
    classes that play novel in epoch selection, on images no training pair ever uses.
    Training images have no pixel of a selection class and hold a training base class
    (>= ``min_pixels``): the PFENet/HSNet rule, so an image whose only objects are novel (all
    of it "background" once novel pixels are relabelled) is never a training image, neither
    as a positive nor as a negative query. ``novel_images``: ``background`` keeps images that
    also hold novel objects (their pixels are "not the class" = background, PFENet/HSNet);
    ``drop`` keeps only images without any novel pixel (BAM)."""
    novel = [int(c) for c in novel_classes]
    selection = [i for i in ids if holds(pixel_counts[i], select, min_pixels) and not touches(pixel_counts[i], novel)]
    training = [i for i in ids if not touches(pixel_counts[i], select)
                and holds(pixel_counts[i], train_classes, min_pixels)
                and (novel_images == "background" or not touches(pixel_counts[i], novel))]
    return training, selection


def negative_queries(pixel_counts: Mapping[str, Sequence[int]], train_ids: Sequence[str],
                     classes: Sequence[int]) -> dict[int, list[str]]:
    """``{class: training images without any pixel of it}``: the negative queries. The
    training images already hold a training base class (:func:`protocol_images`), so a
    negative query is never an image of novel objects alone."""
    return {int(c): [i for i in train_ids if pixel_counts[i][c] == 0] for c in classes}


def draw_pairs(images: dict[int, list[str]], negatives: dict[int, list[str]], n: int, negative_prob: float,
               rng: np.random.Generator) -> list[dict]:
    """``n`` training pairs ``{class, query, support, positive, flip_query, flip_support}`` (see
    the module docstring): the class uniform over ``images`` (classes with >= 2 images),
    positive pairs two distinct images of it, negative pairs a query from ``negatives[c]``
    (training images without the class; none there: the pair stays positive)."""
    classes = sorted(images)
    pairs = []
    for _ in range(n):
        c = classes[int(rng.integers(len(classes)))]
        ids = images[c]
        support = ids[int(rng.integers(len(ids)))]
        positive = True
        if negative_prob > 0 and rng.random() < negative_prob:
            others = negatives.get(c) or []
            if others:
                query, positive = others[int(rng.integers(len(others)))], False
        if positive:
            query = support
            while query == support:
                query = ids[int(rng.integers(len(ids)))]
        pairs.append({"class": c, "query": query, "support": support, "positive": positive,
                      "flip_query": bool(rng.random() < 0.5), "flip_support": bool(rng.random() < 0.5)})
    return pairs


def pair_batches(pairs: list[dict], store: FeatureStore, batch_size: int, flip: bool) -> list[dict]:
    """Batches of ``batch_size`` pairs (:func:`group_batches`) of ``query``, ``support``,
    ``query_mask``, ``support_mask``, ``positive``."""
    items = []
    for pair in pairs:
        fq, fs = pair["flip_query"] and flip, pair["flip_support"] and flip
        items.append({"query": store.features(pair["query"], fq)[0], "support": store.features(pair["support"], fs)[0],
                      "query_mask": store.mask(pair["query"], pair["class"], fq),
                      "support_mask": store.mask(pair["support"], pair["class"], fs),
                      "positive": torch.tensor(pair["positive"])})
        if pair.get("mosaic_with"):  # a two-image query (add_mosaics)
            items[-1]["query"], items[-1]["query_mask"] = feature_mosaic(
                items[-1]["query"], items[-1]["query_mask"], store.features(pair["mosaic_with"])[0],
                store.mask(pair["mosaic_with"], pair["class"]), pair["mosaic_left"])
    return group_batches(items, batch_size)


def add_mosaics(pairs: list[dict], others: dict[int, list[str]], probability: float,
                rng: np.random.Generator) -> list[dict]:
    """With ``probability`` (``crnet.train.mosaic``, an option beyond the paper), a pair's query
    becomes a feature-space mosaic (:func:`pipeline.data.fewshot_features.feature_mosaic`) of
    itself and an image of ``others[c]`` (training images without the pair's class, so its
    objects are background), on a random side: ``mosaic_with``, ``mosaic_left`` added. A
    negative pair's query has no class object either; its mosaic has two distractors. Drawn
    after the pairs, from the same generator, so ``probability`` 0 leaves every pair as it was."""
    if probability <= 0:
        return pairs
    out = []
    for pair in pairs:
        pair = dict(pair)
        candidates = [i for i in others.get(pair["class"]) or [] if i != pair["query"]]
        if rng.random() < probability and candidates:
            pair.update(mosaic_with=candidates[int(rng.integers(len(candidates)))],
                        mosaic_left=bool(rng.random() < 0.5))
        out.append(pair)
    return out


def tpc_batches(pairs: list[dict], store: FeatureStore, batch_size: int) -> list[dict]:
    """Batches of TPC pairs (:func:`pipeline.tpc_crc.tpc_pairs`): each image as support and
    its transformed copy as query (:func:`pipeline.tpc_crc.tpc_item`)."""
    return group_batches([tpc_item(store, pair) for pair in pairs], batch_size)


def group_batches(items: list[dict], batch_size: int) -> list[dict]:
    """Full batches of ``batch_size`` items (a last partial one is dropped), each
    ``{"groups": [...]}``: the items whose tensors have equal sizes, stacked."""
    batches = []
    for start in range(0, len(items) - batch_size + 1, batch_size):
        groups: dict[tuple, list[dict]] = {}
        for item in items[start:start + batch_size]:
            key = tuple(tuple(item[k].shape) for k in ("query", "support", "query_mask", "support_mask"))
            groups.setdefault(key, []).append(item)
        batches.append({"groups": [{k: torch.stack([item[k] for item in items]) for k in items[0]}
                                   for items in groups.values()]})
    return batches


CRC_FORMS = ("cascade", "branch")  # crnet.tpc_crc.variants.<v>.crc (false: no CRC)


def pair_loss(model: CRNet, group: dict, iterations: int, support_weight: float, cooccurrence_weight: float,
              ignore_index: int, crc: str | None = None) -> tuple[torch.Tensor, dict]:
    """The training loss of one group of pairs and its parts (see the module docstring).
    ``crc`` (CRC, :mod:`pipeline.tpc_crc`): ``"cascade"`` (the paper's): CRNet's own loss plus
    a second pass of the whole network with the roles flipped -- the support image as the
    query, the first pass's *soft* query mask (not detached) as the support mask -- whose
    query output must predict the original support mask (``cycle_ce``, weight
    ``support_weight``; positive pairs only); ``"branch"`` (the earlier form): CRNet's support
    branch conditioned on the query's predicted soft mask instead of its ground truth."""
    if crc not in (None, *CRC_FORMS):
        raise ValueError(f"crc must be None or one of {CRC_FORMS}, not {crc!r}")
    out = model(group["query"], group["support"], group["support_mask"],
                query_mask=None if crc == "branch" else group["query_mask"],
                iterations=iterations, predict_support=support_weight > 0, ignore_index=ignore_index)
    qm, sm, positive = group["query_mask"], group["support_mask"], group["positive"]
    query_ce = torch.stack([segmentation_ce(upsample_logits(o, qm.shape[-2:]), qm, ignore_index)
                            for o in out["query"]]).mean()
    loss, parts = query_ce, {"query_ce": float(query_ce.detach())}
    if out["support"] is not None and positive.any():
        support_ce = torch.stack([segmentation_ce(upsample_logits(o[positive], sm.shape[-2:]), sm[positive],
                                                  ignore_index) for o in out["support"]]).mean()
        loss = loss + support_weight * support_ce
        parts["support_ce"] = float(support_ce.detach())
    if crc == "cascade" and support_weight > 0 and positive.any():
        cycle_ce = cascade_ce(model, group, out["query"][-1], iterations, ignore_index)
        loss = loss + support_weight * cycle_ce
        parts["cycle_ce"] = float(cycle_ce.detach())
    if out["cooccurrence"] is not None and cooccurrence_weight > 0:
        bce = sum(cooccurrence_bce(logit, mask, positive, ignore_index)
                  for logit, mask in zip(out["cooccurrence"], (qm, sm))) / 2
        loss = loss + cooccurrence_weight * bce
        parts["cooccurrence_bce"] = float(bce.detach())
    return loss, parts


def cascade_ce(model: CRNet, group: dict, query_logits: torch.Tensor, iterations: int,
               ignore_index: int) -> torch.Tensor:
    """CRC's second stage (the paper's Eq. 1 cascade) on the positive pairs of ``group``: the
    same network with the inputs flipped -- query = the support's features, support = the
    query's features, support mask = the first pass's soft foreground ``softmax(query_logits)``
    on the query's grid, gradient kept -- and its CE against the original support mask, mean
    over the refinement iterations. A negative pair (query without the class) has no mask to
    return from, so it has no term (as CRNet's support term)."""
    positive = group["positive"]
    soft = torch.softmax(query_logits[positive], dim=1)[:, 1]
    sm = group["support_mask"][positive]
    back = model(group["support"][positive], group["query"][positive], soft, iterations=iterations,
                 predict_support=False, ignore_index=ignore_index)
    return torch.stack([segmentation_ce(upsample_logits(o, sm.shape[-2:]), sm, ignore_index)
                        for o in back["query"]]).mean()


def cooccurrence_bce(logits: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """BCE of one branch's co-occurrence prediction. Dense (``B x 1 x h x w``, the paper): the
    target is the pair's class mask of the image where the pair is positive (the object both
    images hold) and all 0 in both images of a negative pair (nothing co-occurs), logits
    resized to the mask, ``ignore_index`` pixels left out. Pooled (``B``): whether the pair is
    positive."""
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, positive.to(torch.float32))
    logits = upsample_logits(logits, mask.shape[-2:])[:, 0]
    target = ((mask == 1) & positive.reshape(-1, 1, 1)).to(torch.float32)
    valid = mask != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid], target[valid])


@torch.no_grad()
def score_episodes(model: CRNet, store: FeatureStore, episodes: list[dict], classes: list[int], iterations: int,
                   device) -> EpisodeIoUAccumulator:
    """1-shot or k-shot episodes of ``store``'s split scored at the label resolution."""
    model.eval()
    acc = EpisodeIoUAccumulator(classes, store.dataset.ignore_index)
    for e in episodes:
        c = e["class"]
        probs = episode_probabilities(model, store.features(e["query"]).to(device),
                                      [store.features(s).to(device) for s in e["supports"]],
                                      [store.mask(s, c) for s in e["supports"]], iterations)
        gt = store.mask(e["query"], c)
        acc.update(binary_prediction(probs[-1].cpu(), gt.shape).numpy(), gt.numpy(), c)
    return acc


def make_optimizer(model: torch.nn.Module, cfg: dict, lr: float) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def load_crnet(path, store: FeatureStore) -> CRNet:
    """The model file's CRNet, built with the switches its meta records."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
    except FileNotFoundError:
        raise PipelineError(path, "model file not found (stage train_crnet)") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure: not our file
        raise PipelineError(path, f"not a readable model file ({type(err).__name__})") from None
    settings = {k: meta.get(k, LEGACY.get(k)) for k in SWITCHES}
    if any(v is None for v in settings.values()):
        raise PipelineError(path, "not a CRNet model file (stage train_crnet)")
    model = build_crnet({"crnet": {"hidden": meta.get("hidden", 0)}}, store.level_channels, settings)
    load_model(path, model, {"model": "CRNet", "level_channels": store.level_channels})
    return model.eval()
