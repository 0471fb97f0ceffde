"""Stage: generate the embedded default dataset (VOC layout) from params ``embedded_data``.

    python -m pipeline.stages.make_embedded --params params.yaml --out data/embedded

Writes ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``,
``README.md`` and ``stats.json`` into ``--out`` atomically (a temporary directory renamed
into place), so an interrupted run leaves the previous dataset or nothing. Class names
come from ``datasets.<--dataset>.classes`` (default: the ``embedded`` entry, whatever
the params' active dataset is). What the scenes are: ``pipeline/data/embedded.py``.
"""
from __future__ import annotations


from pipeline.config import load_params, section
from pipeline.data.embedded import generate_dataset, validate_config
from pipeline.errors import run_stage
from pipeline.io import atomic_dir
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_parser


def main(argv=None):
    # --dataset: the datasets entry whose class names (and overrides) apply
    ap = stage_parser(__doc__, dataset_default="embedded", params_help="params file (section embedded_data)")
    ap.add_argument("--out", required=True, help="dataset root to write (replaced atomically)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = section(params, "embedded_data")
    class_names = list(params["data"]["classes"])
    validate_config(cfg, class_names)       # fail before anything is written
    seed_everything(int(cfg["seed"]))
    with stage_run("make_embedded", {"params": args.params, "dataset": args.dataset}, cfg) as log:
        with atomic_dir(args.out) as tmp:
            stats = generate_dataset(tmp, cfg, class_names)
        train = stats["splits"]["train"]
        shares = ", ".join(f"fold{row['fold']} base {row['base_share']:.2f}" for row in train["folds"])
        rarest = min(list(train["class_image_share"].items())[1:], key=lambda kv: kv[1])
        log.info("wrote %s: %d train + %d val images; rarest class %s in %.0f%% of train; %s",
                 args.out, train["n_images"], stats["splits"]["val"]["n_images"],
                 rarest[0], 100 * rarest[1], shares)


if __name__ == "__main__":
    run_stage(main)
