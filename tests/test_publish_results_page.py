"""Stage publish_results_page: the results page names its commit, date and processor, keeps
the report's text and moves its figures beside the page; a missing report is one error line."""
from __future__ import annotations

import subprocess

import pytest

from pipeline.errors import run_stage
from pipeline.stages import publish_results_page as stage


def test_relink_figures_points_at_the_page_folder():
    text = "![fold 0](figures/embedded_retab_fold0.png) and [x](other/figures/y.png)"
    assert stage.relink_figures(text, "results_figures") == (
        "![fold 0](results_figures/embedded_retab_fold0.png) and [x](other/figures/y.png)")


def test_page_names_commit_date_and_processor_and_keeps_the_report():
    text = stage.page("# Report\n| a | 1.0 |\n", "abc123", "2026-12-08 04:00 UTC", "Some CPU", "r_figures")
    assert "commit abc123, 2026-12-08 04:00 UTC, on Some CPU" in text
    assert text.endswith("# Report\n| a | 1.0 |\n")


def test_stage_writes_page_and_figures(tmp_path, monkeypatch):
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "figures" / "f.png").write_bytes(b"png")
    (report / "report.md").write_text("# R\n![f](figures/f.png)\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run(["git", "add", "a.txt"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.chdir(repo)
    stage.main(["--report", str(report), "--out", "docs/results.md"])
    page = (repo / "docs" / "results.md").read_text()
    assert f"commit {head}," in page and "uncommitted" not in page
    assert "![f](results_figures/f.png)" in page
    assert (repo / "docs" / "results_figures" / "f.png").read_bytes() == b"png"
    (repo / "a.txt").write_text("changed")
    stage.main(["--report", str(report), "--out", "docs/results.md"])
    assert f"commit {head} + uncommitted changes" in (repo / "docs" / "results.md").read_text()


def test_missing_report_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage.main, ["--report", str(tmp_path / "none"), "--out", str(tmp_path / "r.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "build results/report first" in err[0]
    assert not (tmp_path / "r.md").exists()
