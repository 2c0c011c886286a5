"""Bad command lines: one line, exit 2, nothing trained, and a completed job's files untouched.

Each case goes through the command line's check (``check_command_line``, what ``ue-sweep`` runs
before Hydra creates anything) in this process: starting the command costs seconds and adds
nothing the check does not do. One case per kind of entry point runs the real ``ue-sweep``
command, for the exit status and the single line on stderr. Cases marked ``done`` aim the bad
input at the directory of a job that completed (as ``hydra.run.dir`` or, in a multirun, as job 0
of a re-used ``UE_SWEEP_NAME`` sweep); the sweep directory must be byte-identical afterwards. The
others use a fresh directory, which must not be created. docs/BAD_INPUT.md lists every case.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import SMOKE, refusal, run_cli
from ue_sweep.cli.preflight import check_command_line
from ue_sweep.config import TrainingConfig
from ue_sweep.train.classifier import EpochRecord, TrainResult, evaluation_due
from ue_sweep.train.evaluate import EvalResult

SWEEP = "reused"  # UE_SWEEP_NAME of the completed job's sweep
DONE = f"multirun/{SWEEP}/0"

# (id, item of issue 11, arguments, text the one line holds, aimed at the completed job)
CASES = [
    # 1: a rejected or different config aimed at a completed job is refused, naming the directory
    ("rejected-value-at-done", 1, ["clusters.k=1"], f"refusing to overwrite {DONE}", True),
    ("data-rejected-at-done", 1, ["clusters.k=5000"], f"refusing to overwrite {DONE}", True),
    ("other-valid-config-at-done", 1, ["seed=1"], f"refusing to overwrite {DONE}", True),
    ("reused-sweep-bad-value", 1, ["-m", "clusters.k=1,3"], f"overwrite {DONE}", True),
    ("reused-sweep-other-config", 1, ["-m", "seed=5,6"], f"refusing to overwrite {DONE}", True),
    # 2: keys outside the schema, + or not, with the nearest key
    ("typo-key", 2, ["clusters.kk=5"], "clusters.kk=5 is not accepted; expected a known key", True),
    ("typo-key-plus", 2, ["+clusters.kk=5"], "did you mean clusters.k?", True),
    ("typo-key-plusplus", 2, ["++clusters.kk=5"], "did you mean clusters.k?", True),
    ("typo-nested-key", 2, ["generator.epoch=3"], "did you mean generator.epochs?", True),
    ("unknown-top-key", 2, ["+foo=1"], "foo=1 is not accepted; expected a known key", True),
    ("typo-key-in-sweep", 2, ["-m", "clusters.kk=2,3"], "did you mean clusters.k?", False),
    # 3: values that used to start compute
    ("huge-batch", 3, [f"batch_size.per_device={10**20}"], "<= 2147483647", False),
    ("checkpoint-with-fit", 3, ["surrogate.checkpoint=nope.pt"], "surrogate.weights=path", False),
    ("huge-batch-at-done", 3, [f"batch_size.per_device={10**20}"], "refusing to overwrite", True),
    # 6: user errors that used to be tracebacks
    ("division-by-zero", 6, ["generator.eps=${div:16,0}"], "division by zero", True),
    ("run-dir-in-proc", 6, ["hydra.run.dir=/proc/ue-sweep"], "/proc/ue-sweep", False),
    ("run-dir-under-file", 6, ["hydra.run.dir={file}/job"], "is not a directory", False),
    # 7: every config error, Hydra's own too, is one line with exit status 2
    (
        "wrong-type-int",
        7,
        ["clusters.k=abc"],
        "clusters.k='abc' is not accepted; expected an integer",
        True,
    ),
    ("wrong-type-float", 7, ["generator.eps=abc"], "expected a number", True),
    ("wrong-type-bool", 7, ["save_protected=maybe"], "expected true or false", True),
    (
        "unknown-option",
        7,
        ["clusters=77"],
        "clusters='77' is not accepted; expected one of: 2, 3,",
        True,
    ),
    ("unknown-dataset", 7, ["dataset=imagenet"], "one of: bloodmnist, cifar10, digits", True),
    (
        "unknown-launcher",
        7,
        ["hydra/launcher=nope"],
        "one of: basic, frontier, inline, jsm, local",
        True,
    ),
    ("unknown-option-in-sweep", 7, ["-m", "clusters=5,77"], "clusters='77' is not", False),
    ("override-syntax", 7, ["clusters.k=[1"], "config error: ", True),
    (
        "out-of-range",
        7,
        ["clusters.k=1"],
        "clusters.k=1 is not accepted; expected an integer >= 2",
        False,
    ),
    ("out-of-range-in-sweep", 7, ["-m", "clusters.k=2,1"], "clusters.k=1 is not accepted", False),
    # issue 17: evaluations, their knobs and the protection to evaluate
    (
        "unknown-evaluation",
        17,
        ["evals=[victims,nope]"],
        "expected one of: defenses, learnability, membership, privacy, unlearning, victims",
        False,
    ),
    (
        "typo-eval-key",
        17,
        ["evals.victims.control=[sign]"],
        "did you mean evals.victims.controls?",
        True,
    ),
    (
        "unknown-defense",
        17,
        ["evals=[defenses]", "evals.defenses.methods=[jpg]"],
        "a list of distinct values of: epic, jpeg",
        False,
    ),
    (
        "defense-knob-out-of-range",
        17,
        ["evals=[defenses]", "evals.defenses.jpeg.quality=0"],
        "evals.defenses.jpeg.quality=0 is not accepted; expected an integer >= 1",
        False,
    ),
    ("missing-uc-source", 17, ["uc.source=nowhere/job"], "uc.source not found", False),
    # issue 13: DP-SGD victims and imbalanced training data
    (
        "privacy-epsilon-zero",
        13,
        ["evals=[privacy]", "evals.privacy.epsilons=[0,8]"],
        "evals.privacy.epsilons=0.0 is not accepted; expected a number > 0",
        False,
    ),
    (
        "privacy-epsilon-negative",
        13,
        ["evals=[privacy]", "evals.privacy.epsilons=[8,-1]"],
        "evals.privacy.epsilons=-1.0 is not accepted; expected a number > 0",
        False,
    ),
    (
        "privacy-delta-one",
        13,
        ["evals=[privacy]", "evals.privacy.delta=1"],
        "evals.privacy.delta=1.0 is not accepted; expected a number > 0 and < 1",
        False,
    ),
    (
        "privacy-delta-zero",
        13,
        ["evals=[privacy]", "evals.privacy.delta=0"],
        "evals.privacy.delta=0.0 is not accepted; expected a number > 0 and < 1",
        False,
    ),
    (
        "privacy-max-grad-norm-zero",
        13,
        ["evals=[privacy]", "evals.privacy.max_grad_norm=0"],
        "evals.privacy.max_grad_norm=0.0 is not accepted; expected a number > 0",
        False,
    ),
    (
        "privacy-unknown-accountant",
        13,
        ["evals=[privacy]", "evals.privacy.accountant=gdp"],
        "evals.privacy.accountant='gdp' is not accepted; expected one of: prv, rdp",
        False,
    ),
    (
        "imbalance-ratio-below-one",
        13,
        ["dataset.imbalance.profile=exponential", "dataset.imbalance.ratio=0.5"],
        "dataset.imbalance.ratio=0.5 is not accepted; expected a number >= 1",
        False,
    ),
    (
        "imbalance-unknown-profile",
        13,
        ["dataset.imbalance.profile=linear"],
        "expected one of: none, exponential, step",
        False,
    ),
    # issue 23: a store that cannot be created, an evaluation listed twice
    (
        "artifact-dir-in-proc",
        23,
        ["paths.artifact_dir=/proc/ue"],
        "cannot create the artifact store (paths.artifact_dir) /proc/ue: /proc:",
        False,
    ),
    (
        "artifact-dir-under-file",
        23,
        ["paths.artifact_dir={file}/store"],
        "is not a directory",
        False,
    ),
    ("evaluation-twice", 23, ["evals=[victims,victims]"], "(victims listed twice)", False),
    (
        "evaluation-twice-in-sweep",
        23,
        ["-m", "evals=[victims],[defenses,defenses]"],
        "(defenses listed twice)",
        False,
    ),
    # 8: a dataset root that is a regular file
    (
        "dataset-root-is-file",
        8,
        ["dataset=pathmnist", "dataset.root={file}"],
        "is a file, not a directory",
        False,
    ),
]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding one completed smoke job as job 0 of the sweep ``reused``."""
    root = tmp_path_factory.mktemp("bad-input")
    proc = run_cli([*SMOKE, "trainer.progress=none", f"hydra.run.dir={DONE}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (root / "a-file").write_text("not a directory\n")
    return root


def _where(args: list[str], at_done: bool) -> list[str]:
    if "-m" in args or any(a.startswith("hydra.run.dir") for a in args):
        return []
    return [f"hydra.run.dir={DONE}"] if at_done else ["hydra.run.dir=fresh"]


@pytest.mark.parametrize(
    ("item", "args", "expected", "at_done"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_one_line_and_loses_nothing(
    workdir, monkeypatch, item, args, expected, at_done
):
    args = [a.replace("{file}", str(workdir / "a-file")) for a in args]
    before = _tree(workdir / "multirun")
    sweep = SWEEP if at_done else "fresh-sweep"
    message = refusal(
        [*args, *SMOKE, *_where(args, at_done)], workdir, monkeypatch, UE_SWEEP_NAME=sweep
    )
    assert "\n" not in message and expected in message, message
    assert _tree(workdir / "multirun") == before, "the completed job's files are untouched"
    assert not (workdir / "fresh").exists() and not (workdir / "multirun" / "fresh-sweep").exists()


def test_the_command_refuses_in_one_line_with_exit_2_and_loses_nothing(workdir):
    """The real command, once for a single run and once for a multirun."""
    before = _tree(workdir / "multirun")
    for args, sweep, expected in (
        (["clusters.kk=5", f"hydra.run.dir={DONE}"], SWEEP, "did you mean clusters.k?"),
        (["-m", "clusters.k=2,1"], "fresh-sweep", "clusters.k=1 is not accepted"),
    ):
        proc = run_cli([*args, *SMOKE], cwd=workdir, timeout=120, UE_SWEEP_NAME=sweep)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and expected in lines[0], lines
        assert "surrogate" not in proc.stdout and "k-means" not in proc.stdout, "nothing trains"
    assert _tree(workdir / "multirun") == before, "the completed job's files are untouched"
    assert not (workdir / "multirun" / "fresh-sweep").exists()


@pytest.mark.parametrize("name", ["../../x", "..", "/tmp/x", "a/../../b", ""])
def test_a_sweep_name_that_leaves_multirun_is_refused(tmp_path, monkeypatch, name):
    message = refusal(["-m", *SMOKE, "seed=0,1"], tmp_path, monkeypatch, UE_SWEEP_NAME=name)
    assert message.startswith(f"UE_SWEEP_NAME={name!r} is not accepted; expected a name inside")
    assert not list(tmp_path.iterdir()), "nothing is created"


def test_a_sweep_name_inside_multirun_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UE_SWEEP_NAME", "study/k10-s0")
    check_command_line(["-m", *SMOKE, "seed=0,1"])


def test_hydra_mode_multirun_is_checked_as_the_multirun_hydra_runs(tmp_path, monkeypatch):
    """Without ``-m``, ``hydra.mode=MULTIRUN`` makes Hydra run a multirun (``hydra.get_mode``):
    each job of its grid is checked, and launcher settings are not refused as single-run ones."""
    grid = [*SMOKE, "hydra.mode=MULTIRUN", "clusters.k=1,3"]
    message = refusal(grid, tmp_path, monkeypatch)
    assert message.startswith("job #0 (experiment=smoke trainer.progress=log clusters.k=1): ")
    assert "clusters.k=1 is not accepted" in message and "#1" not in message
    check_command_line(
        [
            *SMOKE,
            "hydra.mode=MULTIRUN",
            "hydra/launcher=local",
            "seed=0,1",
            "hydra.launcher.check_only=true",
        ]
    )
    single = [*SMOKE, "hydra/launcher=local", "hydra.launcher.check_only=true"]
    assert "applies to a multirun" in refusal(single, tmp_path, monkeypatch)


def test_a_refused_grid_says_each_cause_once_with_the_jobs_it_blocks(tmp_path, monkeypatch):
    data = tmp_path / "no-data"
    args = ["-m", *SMOKE, "dataset=cifar10,pets", "seed=0,1,2", f"paths.data_dir={data}"]
    lines = refusal(args, tmp_path, monkeypatch).splitlines()
    assert lines == [
        f"3 jobs (#0, #1, #2): CIFAR-10 dataset not found: expected cifar10 in {data}; on a "
        f"machine with internet access, run: ue-sweep-data fetch cifar10 --root {data / 'cifar10'}",
        f"3 jobs (#3, #4, #5): Oxford-IIIT Pet dataset not found: expected pets in {data}; on a "
        f"machine with internet access, run: ue-sweep-data fetch pets --root {data / 'pets'}",
    ]


def test_average_last_beyond_the_epochs_is_recorded_as_the_epochs_averaged():
    """``victim.average_last=100`` on 2-epoch victims: every epoch is tested, and the record says
    the mean is over 2 (``mean_last.epochs``, the victims' ``averaged_epochs``)."""
    recipe = TrainingConfig(epochs=2, average_last=100, eval_every=5)
    assert [evaluation_due(recipe, epoch) for epoch in range(2)] == [True, True]
    accuracies = {0: 0.25, 1: 0.75}
    history = [EpochRecord(e, 1.0, 0.5, a, a, 0.1, 1.0, a) for e, a in accuracies.items()]
    result = TrainResult(
        test=EvalResult(((1, 0), (0, 1))),
        per_device_batch=8,
        global_batch=8,
        steps_per_epoch=1,
        seconds=1.0,
        sync_batchnorm=False,
        average_last=recipe.average_last,
        history=history,
    )
    assert result.mean_last() == {
        "epochs": 2,
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "worst_class_accuracy": 0.5,
    }
