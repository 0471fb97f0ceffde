"""Stage publish_results_page: docs/results.md, the results page the docs link to.

    python -m pipeline.stages.publish_results_page --report results/report --out docs/results.md

Copies ``report.md`` of a finished ``results/report`` (stage report_all) to ``--out`` under a
header that says when and where the numbers were made: the git commit (with ``+ uncommitted
changes`` when the tree differed from it), the UTC date and the processor. Figures move beside the
page (``<out stem>_figures/``) and the links follow, so the page can be committed as it is. Numbers
are never retyped by hand: the docs link here, and a rerun of the target replaces the page.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, atomic_path


def git_commit(cwd: Path) -> str:
    """``<short hash>`` of HEAD, ``+ uncommitted changes`` when tracked files differ; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def processor() -> str:
    """The CPU model name (/proc/cpuinfo), else platform's description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def relink_figures(markdown: str, figures_dir: str) -> str:
    """Point the report's relative ``figures/...`` links at ``figures_dir/...``."""
    return re.sub(r"\]\(figures/", f"]({figures_dir}/", markdown)


def page(report_md: str, commit: str, date: str, cpu: str, figures_dir: str) -> str:
    header = (f"<!-- written by `snakemake docs/results.md` (stage publish_results_page); do not edit -->\n"
              f"> Generated from `results/report` at commit {commit}, {date}, on {cpu}. Rerun the target to "
              f"refresh it; scores from another machine agree within the training-seed spread, not to the last "
              f"digit (docs/operations.md).\n\n")
    return header + relink_figures(report_md, figures_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--report", required=True, help="finished results/report directory")
    ap.add_argument("--out", required=True, help="the page to write, e.g. docs/results.md")
    args = ap.parse_args(argv)
    report = Path(args.report)
    if not (report / "report.md").is_file():
        raise PipelineError(report, "no report.md: build results/report first")
    out = Path(args.out)
    figures_name = f"{out.stem}_figures"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = page((report / "report.md").read_text(), git_commit(Path.cwd()), date, processor(), figures_name)
    if (report / "figures").is_dir():
        with atomic_dir(out.parent / figures_name) as tmp:
            shutil.copytree(report / "figures", tmp, dirs_exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)


if __name__ == "__main__":
    run_stage(main)
