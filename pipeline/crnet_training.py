"""CRNet training and episode scoring, shared by the few-shot stages (train_crnet, the
episodic test's k-shot finetune; TPC + CRC, :mod:`pipeline.tpc_crc`, as a training scheme): variants, training
pairs from cached features, the loss, the optimizer, scoring episodes.
Stage docs: :mod:`pipeline.methods.crnet.train_crnet`.
"""
from __future__ import annotations

import re

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


def split_holdout(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids): a seeded share of ``ids`` (at least one each when possible),
    both in the order of ``ids``."""
    n_hold = int(round(len(ids) * fraction))
    n_hold = min(max(n_hold, 1), len(ids) - 1) if len(ids) > 1 else 0
    held = set(np.random.default_rng([seed, 1]).permutation(len(ids))[:n_hold].tolist())
    return [i for k, i in enumerate(ids) if k not in held], [i for k, i in enumerate(ids) if k in held]


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


def pair_loss(model: CRNet, group: dict, iterations: int, support_weight: float, cooccurrence_weight: float,
              ignore_index: int, cyclic: bool = False) -> tuple[torch.Tensor, dict]:
    """The training loss of one group of pairs and its parts (see the module docstring).
    ``cyclic`` (CRC, :mod:`pipeline.tpc_crc`): the support branch is conditioned on the
    query's *predicted* soft mask instead of its ground truth, gradient kept."""
    out = model(group["query"], group["support"], group["support_mask"],
                query_mask=None if cyclic else group["query_mask"],
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
    if out["cooccurrence"] is not None and cooccurrence_weight > 0:
        bce = sum(cooccurrence_bce(logit, mask, positive, ignore_index)
                  for logit, mask in zip(out["cooccurrence"], (qm, sm))) / 2
        loss = loss + cooccurrence_weight * bce
        parts["cooccurrence_bce"] = float(bce.detach())
    return loss, parts


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
