"""`report` writes only what has runs behind it and names each file; with nothing to report,
or outside a git repository, the command says so in one line and leaves every file as it was."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harclip.experiments import report
from harclip.runtime.errors import StageError
from tests.unit.experiments.test_experiments import _aclip, _run

METRICS = {f"{m}.{k}": 0.5 for m in ("clip", "sglip", "aclip")
           for k in ("test_acc", "val_acc", "epoch_s")}


@pytest.fixture
def committed(tmp_path):
    """docs/results as the repository holds it: results of earlier sweeps."""
    out = tmp_path / "results"
    out.mkdir()
    for name in ("seeds.md", "finetune.md", "ablation.md"):
        (out / name).write_text(f"{name}: 30 lines of committed results\n")
    return out


@pytest.mark.parametrize("kind", ["seeds", "ablation", "finetune"])
def test_a_report_with_only_the_commits_own_run_is_refused_and_rewrites_nothing(
        committed, kind):
    before = {path.name: path.read_bytes() for path in committed.iterdir()}
    commit = _run(METRICS, {}, typ="baseline")
    with pytest.raises(StageError, match=rf"no finished {kind} experiments .*/"
                                         rf"{kind}\.md is left as it was: queue them with "
                                         rf"`python -m harclip\.experiments {kind} --seeds"):
        report.report(kind, committed, [commit])
    assert {path.name: path.read_bytes() for path in committed.iterdir()} == before


@pytest.mark.parametrize("kind", ["ablation", "finetune"])
def test_seeds_of_the_commits_own_configuration_alone_are_refused(committed, kind):
    """A seeds sweep's runs pass every report's filter (a seed is free in each): they are no
    ablation or fine-tuning comparison, and rewrite neither report."""
    rows = [_aclip("cached", 0.75, seed, 0.5, typ="baseline" if seed == 0 else "exp")
            for seed in (0, 1, 2)]
    with pytest.raises(StageError, match=f"no finished {kind} experiments beside the commit's "
                                         f"own configuration"):
        report.report(kind, committed, rows)
    assert (committed / f"{kind}.md").read_text().startswith(f"{kind}.md: 30 lines")
    assert not (committed / f"{kind}.png").exists()


def test_a_seeds_report_of_one_models_seeds_is_refused(committed):
    rows = [_run(METRICS, {"train_aclip.seed": seed}, typ="baseline" if seed == 0 else "exp")
            for seed in (0, 1)]
    with pytest.raises(StageError, match="no finished seeds experiments"):
        report.report("seeds", committed, rows)


def test_an_ablation_whose_runs_are_none_of_its_configurations_is_refused(committed):
    rows = [_aclip("teacher", 0.6, 0, 0.5, typ="baseline"), _aclip("teacher", 0.6, 1, 0.6)]
    with pytest.raises(StageError, match="no finished ablation experiments"):
        report.report("ablation", committed, rows)
    assert (committed / "ablation.md").read_text().startswith("ablation.md: 30 lines")


def test_a_seeds_report_writes_its_table_only_and_names_it(committed):
    rows = [_run(METRICS, {"train.seed": 0}, typ="baseline"), _run(METRICS, {"train.seed": 1})]
    table, written = report.report("seeds", committed, rows)
    assert written == [committed / "seeds.md"]
    assert (committed / "seeds.md").read_text() == table and "| 0, 1 |" in table
    assert (committed / "finetune.md").read_text().startswith("finetune.md: 30 lines")
    assert not (committed / "finetune.png").exists()


def test_an_ablation_report_names_its_table_and_figure(committed):
    rows = [_aclip("teacher", 0.75, 0, 0.5, typ="baseline"), _aclip("random", 0.75, 0, 0.4)]
    _, written = report.report("ablation", committed, rows)
    assert written == [committed / "ablation.md", committed / "ablation.png"]
    assert written[1].read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("command", [["show"], ["report", "seeds", "--out", "results"]])
def test_outside_a_git_repository_the_command_says_so_in_one_line(tmp_path, command):
    done = subprocess.run([sys.executable, "-m", "harclip.experiments", *command],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not inside a git repository with this project's " \
                               "experiments" in lines[0], done.stderr
    assert done.stdout == "" and not (tmp_path / "results").exists()
