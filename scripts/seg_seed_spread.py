"""Seed spread of the segmentation stage: how much of a gap between two rows of a RETAB
table is the segmentation net's own training noise, not the pseudo labels.

For each chosen method of a finished fold (``snakemake results/<dataset>/retab_fold<k>``),
it retrains the segmentation net with other seeds on the same inputs (the DAG's pseudo
labels, fold file and feature cache), predicts val and evaluates, by running the DAG's own
stages (pipeline.stages.train_seg / predict_seg / evaluate) with the effective params of the
last DAG run and only ``seed`` changed. It then prints val all / base / novel mIoU per
method: the DAG's run, every extra seed, and mean +- sample std over all of them.

    .venv/bin/python scripts/seg_seed_spread.py --dataset embedded --fold 0 --seeds 1 2 3

Outputs go to work/<dataset>/fold<k>/seed_spread/: <method>/seed<s>/{model.pt, history.tsv,
pred_val/, eval.json, *.log}, spread.json and spread.md. A (method, seed) whose eval.json
exists is not recomputed, so a rerun with more seeds only trains the new ones.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.errors import PipelineError, run_stage  # noqa: E402
from pipeline.io import write_json, write_text  # noqa: E402
from pipeline.layout import eval_path, pseudo_dir, seg_dir  # noqa: E402
from pipeline.method_table import RETAB  # noqa: E402

EFFECTIVE_PARAMS = Path("work/params/effective.yaml")
SCORES = ("miou", "miou_base", "miou_novel")


def params_with_seed(effective: Path, dataset: str, seed: int, out: Path) -> Path:
    """The effective params of the DAG's last run with ``seed`` (top level and, where the
    dataset's override sets one, there too) written to ``out``."""
    raw = yaml.safe_load(effective.read_text())
    raw["seed"] = seed
    override = (raw.get("overrides") or {}).get(dataset) or {}
    if "seed" in override:
        override["seed"] = seed
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, yaml.safe_dump(raw, sort_keys=False))
    if load_params(out, dataset)["seed"] != seed:
        raise PipelineError(str(out), f"seed {seed} did not reach the resolved params of dataset {dataset}")
    return out


def stage_commands(dataset: str, fold: int, method: str, params: Path, run_dir: Path, features: bool,
                   threads: int) -> list[tuple[str, list[str]]]:
    """(name, argv) of train_seg, predict_seg and evaluate for one method, as the rules of
    workflow/rules/retab.smk write them, with outputs under ``run_dir``."""
    source, supervision = RETAB.rows[method].pseudo_source, RETAB.rows[method].supervision
    common = ["--params", str(params), "--dataset", dataset]
    feature_dir = f"work/{dataset}/shared/seg/features"
    train = [*common, "--supervision", supervision, "--labels", f"work/{dataset}/image_labels.json",
             "--out", str(run_dir / "model.pt"), "--history", str(run_dir / "history.tsv"),
             "--threads", str(threads)]
    if source is not None:
        train += ["--pseudo", pseudo_dir(dataset, source, fold)]
    if supervision == "mixed":
        train += ["--fold-file", f"work/{dataset}/folds/fold{fold}.json"]
    predict = [*common, "--model", str(run_dir / "model.pt"), "--split", "val",
               "--out", str(run_dir / "pred_val"), "--threads", str(threads)]
    if features:
        train += ["--features", f"{feature_dir}/train.pt"]
        predict += ["--features", f"{feature_dir}/val.pt"]
    evaluate = [*common, "--split", "val", "--pred", str(run_dir / "pred_val"),
                "--fold-file", f"work/{dataset}/folds/fold{fold}.json", "--out", str(run_dir / "eval.json")]
    return [("train_seg", train), ("predict_seg", predict), ("evaluate", evaluate)]


def check_finished_fold(dataset: str, fold: int, methods: list[str]) -> None:
    needed = [EFFECTIVE_PARAMS, Path(f"work/{dataset}/folds/fold{fold}.json")]
    for method in methods:
        needed.append(Path(eval_path(dataset, fold, method, "val")))
        source = RETAB.rows[method].pseudo_source
        if source is not None:
            needed.append(Path(pseudo_dir(dataset, source, fold)))
    for path in needed:
        if not path.exists():
            target = f"results/{dataset}/retab_fold{fold}" if dataset != "embedded" else f"results/retab_fold{fold}"
            raise PipelineError(str(path), f"missing; run `snakemake {target}` first")


def spread_rows(scores: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: every run's scores and, per score, mean and sample std (None for one run)."""
    rows = {}
    for method, runs in scores.items():
        summary = {}
        for key in SCORES:
            values = [run[key] for run in runs if run.get(key) is not None]
            summary[key] = {"mean": statistics.fmean(values) if values else None,
                            "std": statistics.stdev(values) if len(values) > 1 else None}
        rows[method] = {"runs": runs, "summary": summary}
    return rows


def markdown_table(rows: dict[str, dict]) -> str:
    def cell(stat: dict) -> str:
        if stat["mean"] is None:
            return "–"
        return f"{100 * stat['mean']:.1f}" + ("" if stat["std"] is None else f" ± {100 * stat['std']:.1f}")

    lines = ["| Method | seeds | val all | val base | val novel |", "|---|---|---:|---:|---:|"]
    for method, row in rows.items():
        seeds = ",".join(str(run["seed"]) for run in row["runs"])
        lines.append(f"| {RETAB.rows[method].title} | {seeds} | "
                     + " | ".join(cell(row["summary"][key]) for key in SCORES) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["cam_rw_seggt", "cam_rw_affgt_seggt", "retab"],
                    choices=sorted(RETAB.rows))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="extra seeds (the DAG's is kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-dag-seed", action="store_true",
                    help="also retrain with the DAG's own seed and fail unless it gives the DAG's scores"
                         " (checks that these runs are the DAG's stages, not a variant of them)")
    args = ap.parse_args(argv)

    check_finished_fold(args.dataset, args.fold, args.methods)
    base_params = load_params(EFFECTIVE_PARAMS, args.dataset)
    dag_seed = int(base_params["seed"])
    features = bool(base_params["segmentation"].get("feature_cache"))
    out_dir = Path(f"work/{args.dataset}/fold{args.fold}/seed_spread")
    # the stages of this checkout, also when the package is not installed in the interpreter
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    scores: dict[str, list[dict]] = {}
    seed_params: dict[int, Path] = {}  # one params file per seed, shared by the methods
    for method in args.methods:
        dag_eval = json.loads(Path(eval_path(args.dataset, args.fold, method, "val")).read_text())
        scores[method] = [{"seed": dag_seed, "source": eval_path(args.dataset, args.fold, method, "val"),
                           **{key: dag_eval.get(key) for key in SCORES}}]
        seeds = list(dict.fromkeys(args.seeds + ([dag_seed] if args.check_dag_seed else [])))
        for seed in seeds:
            if seed == dag_seed and not args.check_dag_seed:
                continue
            run_dir = out_dir / method / f"seed{seed}"
            eval_file = run_dir / "eval.json"
            if not eval_file.exists():
                if seed not in seed_params:
                    seed_params[seed] = params_with_seed(EFFECTIVE_PARAMS, args.dataset, seed,
                                                         out_dir / f"params_seed{seed}.yaml")
                params = seed_params[seed]
                run_dir.mkdir(parents=True, exist_ok=True)
                for name, stage_args in stage_commands(args.dataset, args.fold, method, params, run_dir,
                                                       features, args.threads):
                    log = run_dir / f"{name}.log"
                    with open(log, "w") as stderr:
                        done = subprocess.run([sys.executable, "-m", f"pipeline.stages.{name}", *stage_args],
                                              stderr=stderr, env=env)
                    if done.returncode != 0:
                        last = log.read_text().strip().splitlines()[-1:] or ["(empty log)"]
                        raise PipelineError(str(log), f"{name} failed for {method} seed {seed}: {last[0]}")
            run_eval = json.loads(eval_file.read_text())
            if seed == dag_seed:
                if any(run_eval.get(key) != dag_eval.get(key) for key in SCORES):
                    raise PipelineError(str(eval_file), f"{method} retrained with the DAG's seed {seed} does not"
                                        f" reproduce {eval_path(args.dataset, args.fold, method, 'val')}")
                print(f"{method} seed {seed}: reproduces the DAG's scores exactly", flush=True)
                continue
            scores[method].append({"seed": seed, "source": str(eval_file),
                                   **{key: run_eval.get(key) for key in SCORES}})
            print(f"{method} seed {seed}: " + ", ".join(f"{key} {100 * run_eval[key]:.1f}" for key in SCORES
                                                        if run_eval.get(key) is not None), flush=True)
    rows = spread_rows(scores)
    write_json(out_dir / "spread.json", {"dataset": args.dataset, "fold": args.fold, "rows": rows})
    table = markdown_table(rows)
    write_text(out_dir / "spread.md", table)
    print(table, end="")
    print(f"wrote {out_dir}/spread.md and spread.json; the DAG's own seed-{dag_seed} nets stay in"
          f" {seg_dir(args.dataset, args.methods[0], args.fold)} and its siblings")


if __name__ == "__main__":
    run_stage(main)
