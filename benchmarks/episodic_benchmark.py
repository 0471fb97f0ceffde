"""Benchmark of few-shot episode evaluation: episodes per second of stage test_crnet's scoring.

On synthetic cached features (EfficientNet-Lite0 levels 2 + 3: 40 + 112 channels at stride
8) of the shapes of each setting of ``SETTINGS`` (the embedded default: 128 px labels, a
16 x 16 grid, crnet.hidden 64; MSRC: 320 x 213 labels, a 20 x 14 grid at input_scale 0.5,
hidden 64; VOC-like: 320 x 320 labels at full scale, hidden 256), it times one episode end to
end, as stage test_crnet runs it (probabilities, resize to the label, threshold, the IoU
accumulator):

* the prototype floor (PANet without alignment), 1-shot: the baseline;
* CRNet 1-shot with 1 and with the test's 5 refinement iterations;
* CRNet 5-shot, probability-averaging fusion (5 iterations);

and prints episodes/s and each one's cost relative to the floor measured in the same run.
CRNet is randomly initialised: the time does not depend on the weights. The k-shot finetune
is a training run per episode and is timed by its own rule's benchmark file instead.
Run: ``python benchmarks/episodic_benchmark.py [--episodes 50] [--threads 2] [--settings embedded msrc]``
(~1 minute; the machine's other load shows in the timings).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.fewshot import binary_prediction, prototype_probability  # noqa: E402
from pipeline.metrics.episodic import EpisodeIoUAccumulator  # noqa: E402
from pipeline.models.crnet import CRNet, episode_probabilities  # noqa: E402

LEVEL_CHANNELS = (40, 112)  # efficientnet_lite0 levels 2 and 3 (crnet.encoder.levels)
# name: (label height, width), (feature grid height, width), crnet.hidden
SETTINGS = {"embedded": ((128, 128), (16, 16), 64),
            "msrc": ((213, 320), (14, 20), 64),
            "voc": ((320, 320), (40, 40), 256)}


def synthetic_episode(label_hw, grid_hw, shots: int, generator: torch.Generator) -> dict:
    """Features ``1 x 152 x grid`` of a query and ``shots`` supports, with a square object
    mask at the label size (class 1, a 255 border row)."""
    channels = sum(LEVEL_CHANNELS)

    def mask() -> torch.Tensor:
        m = torch.zeros(*label_hw, dtype=torch.uint8)
        a, b = sorted(torch.randint(0, min(label_hw), (2,), generator=generator).tolist())
        m[a:b + 8, a:b + 8] = 1
        m[:2] = 255
        return m

    return {"query": torch.randn(1, channels, *grid_hw, generator=generator), "query_mask": mask(),
            "supports": [torch.randn(1, channels, *grid_hw, generator=generator) for _ in range(shots)],
            "masks": [mask() for _ in range(shots)]}


def time_episodes(run_one, episodes: list[dict], repeats: int) -> float:
    """Median over ``repeats`` of the wall seconds per episode."""
    run_one(episodes[0])  # warm-up: first-call allocations and thread pools
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for e in episodes:
            run_one(e)
        timings.append((time.perf_counter() - start) / len(episodes))
    return statistics.median(timings)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50, help="episodes per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per case (the median is printed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the rules' threads on 2 cores)")
    ap.add_argument("--settings", nargs="+", default=["embedded", "msrc"], choices=sorted(SETTINGS),
                    help="shapes to time (voc: the full-size default, slow on a CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"episode evaluation, {args.threads} threads, median of {args.repeats} x {args.episodes} episodes")
    for name in args.settings:
        benchmark_setting(name, args)


def benchmark_setting(setting: str, args) -> None:
    label_hw, grid_hw, hidden = SETTINGS[setting]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = CRNet(LEVEL_CHANNELS, hidden=hidden).eval()
    one_shot = [synthetic_episode(label_hw, grid_hw, 1, generator) for _ in range(args.episodes)]
    five_shot = [synthetic_episode(label_hw, grid_hw, 5, generator) for _ in range(args.episodes)]
    acc = EpisodeIoUAccumulator([1])

    def score(probability: torch.Tensor, e: dict) -> None:
        gt = e["query_mask"]
        acc.update(binary_prediction(probability, gt.shape).numpy(), gt.numpy(), 1)

    def floor(e: dict) -> None:
        score(prototype_probability(e["query"][0], [s[0] for s in e["supports"]], e["masks"]), e)

    def crnet(iterations: int):
        def run(e: dict) -> None:
            with torch.no_grad():
                score(episode_probabilities(model, e["query"], e["supports"], e["masks"], iterations)[-1], e)
        return run

    cases = [("prototype floor, 1-shot (baseline)", floor, one_shot),
             ("CRNet 1-shot, 1 iteration", crnet(1), one_shot),
             ("CRNet 1-shot, 5 iterations", crnet(5), one_shot),
             ("CRNet 5-shot fusion, 5 iterations", crnet(5), five_shot)]
    seconds = {name: time_episodes(run, episodes, args.repeats) for name, run, episodes in cases}
    base = seconds[cases[0][0]]
    print(f"\n{setting}: labels {label_hw[0]} x {label_hw[1]}, features {sum(LEVEL_CHANNELS)} x {grid_hw[0]} x "
          f"{grid_hw[1]}, crnet.hidden {hidden}")
    print(f"{'case':40s} {'ms/episode':>11s} {'episodes/s':>11s} {'x floor':>8s}")
    for name, _, _ in cases:
        s = seconds[name]
        print(f"{name:40s} {1000 * s:11.2f} {1 / s:11.1f} {s / base:8.1f}")


if __name__ == "__main__":
    main()
