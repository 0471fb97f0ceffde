"""Does the affinity net transfer to novel classes? Mean predicted affinity of pixel pairs
inside novel objects, inside base objects, inside the background and across classes, on the
fold's train novel samples, for each affinity-net variant of a finished fold.

A weak-shot affinity net sees pixel labels of base classes only (variants gt and retab) or
confident CAM labels only (variant cam). If it rates pairs inside novel objects lower than
pairs inside base objects, the random walk lets the background flow into novel objects and
the pseudo labels come out tight (high precision, low recall; see the report's "Where novel
pixels go" tables).

    .venv/bin/python scripts/affinity_transfer_probe.py --dataset embedded --fold 0

Prints one table (mean affinity a and mean a^beta, beta from params: the walk uses a^beta)
and writes work/<dataset>/fold<k>/affinity_probe.json. Inference only, as stage propagate
runs it (same model loading, normalisation, flip).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.data.batches import normalize_batch  # noqa: E402
from pipeline.data.folds import load_fold  # noqa: E402
from pipeline.data.voc import VOCDataset  # noqa: E402
from pipeline.errors import PipelineError, run_stage  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.layout import AFFINITY_VARIANTS, scope_of  # noqa: E402
from pipeline.propagation.affinity import affinity_by_pair_type  # noqa: E402

EFFECTIVE_PARAMS = Path("work/params/effective.yaml")
PAIR_TYPES = ("within_novel", "within_base", "background", "across")


def pooled_means(per_image: list[dict]) -> dict[str, float | None]:
    """Pool :func:`affinity_by_pair_type` results of several images: sum / count per type."""
    out = {}
    for name in PAIR_TYPES:
        n = sum(r[name]["pairs"] for r in per_image)
        out[name] = sum(r[name]["sum"] for r in per_image) / n if n else None
    return out


def probe_variant(model_path: Path, params: dict, walk_cfg: dict, dataset: VOCDataset, ids: list[str],
                  novel: list[int]) -> dict:
    """Pooled means for one affinity net; ``walk_cfg``: the walk's radius, flip and beta."""
    from pipeline.models import backbone_normalization
    from pipeline.methods.retab.propagate import load_affinity_model, predict_affinities
    from pipeline.methods.retab.train_affinity import reduce_to_grid

    model, _ = load_affinity_model(str(model_path), params, "cpu")
    mean, std = backbone_normalization(params["backbone"])
    radius, flip, beta = walk_cfg["radius"], walk_cfg["flip"], float(walk_cfg["beta"])
    plain, powered = [], []
    for image_id in ids:
        batch = normalize_batch(dataset.load_image(image_id)[None], mean, std)
        aff, grid = predict_affinities(model, batch, radius, flip)
        labels = reduce_to_grid(torch.from_numpy(dataset.load_mask(image_id).astype(np.int64))[None], grid)[0]
        kwargs = {"ignore_index": dataset.ignore_index, "background_index": dataset.background_index}
        plain.append(affinity_by_pair_type(aff[0], labels, radius, novel, **kwargs))
        powered.append(affinity_by_pair_type(aff[0] ** beta, labels, radius, novel, **kwargs))
    return {"affinity": pooled_means(plain), "affinity_pow_beta": pooled_means(powered),
            "pairs": {name: sum(r[name]["pairs"] for r in plain) for name in PAIR_TYPES}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(AFFINITY_VARIANTS), choices=list(AFFINITY_VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fold_file = Path(f"work/{args.dataset}/folds/fold{args.fold}.json")
    models = {v: Path(f"work/{args.dataset}/{scope_of(AFFINITY_VARIANTS[v], args.fold)}/affinity/{v}/model.pt")
              for v in args.variants}
    for path in [EFFECTIVE_PARAMS, fold_file, *models.values()]:
        if not path.exists():
            target = f"results/{args.dataset}/retab_fold{args.fold}" if args.dataset != "embedded" \
                else f"results/retab_fold{args.fold}"
            raise PipelineError(str(path), f"missing; run `snakemake {target}` first")
    params = load_params(EFFECTIVE_PARAMS, args.dataset)
    fold = load_fold(fold_file)
    dataset = VOCDataset(params["data"], "train")
    ids, novel = list(fold["novel_samples"]), list(fold["novel_classes"])
    from pipeline.methods.retab.propagate import propagation_config

    walk_cfg = propagation_config(params, "single")  # radius, flip, beta checked as stage propagate does
    beta = float(walk_cfg["beta"])
    results = {v: probe_variant(path, params, walk_cfg, dataset, ids, novel) for v, path in models.items()}
    write_json(Path(f"work/{args.dataset}/fold{args.fold}/affinity_probe.json"),
               {"dataset": args.dataset, "fold": args.fold, "images": len(ids), "beta": beta, "variants": results})

    def cell(value):
        return "–" if value is None else f"{value:.3f}"

    print(f"{args.dataset} fold {args.fold}: {len(ids)} train novel samples; mean affinity a | mean a^{beta:g}")
    print("| variant | " + " | ".join(PAIR_TYPES) + " | novel / base |")
    print("|---|" + "---:|" * (len(PAIR_TYPES) + 1))
    for variant, r in results.items():
        cells = [f"{cell(r['affinity'][t])} \\| {cell(r['affinity_pow_beta'][t])}" for t in PAIR_TYPES]
        novel_a, base_a = r["affinity_pow_beta"]["within_novel"], r["affinity_pow_beta"]["within_base"]
        ratio = cell(novel_a / base_a) if novel_a is not None and base_a else "–"
        print(f"| {variant} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    run_stage(main)
