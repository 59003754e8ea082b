"""Issue 12, a run directory nothing can damage: every fault reproduced for real.

Each test damages a run (or its storage, its config, its signals, its peers), then checks the
exit status, the one-line message (no traceback, naming the key, file or path) and that every
file saved before the fault is byte-for-byte unchanged (bytes and modification time, as
``snapshot`` records them; ``.lock`` says who holds the run, not saved work).

The real ``fmlp`` command runs in subprocesses from the repository root, two at a time, with a
shared persistent compilation cache; a few faults that cannot be made for real here (a full
disk, read-only storage: the tests run as root) are injected into ``fmlp.cli.main`` in
process. Runs are tiny and shared through module-scoped fixtures: a trained run is copied
(``shutil.copytree``) for each damage.
"""

import concurrent.futures
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

import fmlp
import fmlp.run
from fmlp import checkpoint, cli, config, data, gates
from fmlp.errors import DataError, RunDirectoryError

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")  # the console script pip installed
CLS = "configs/lecture_classification.yaml"  # constant learning rate: resumes are bitwise
DIGITS = "configs/digits.yaml"
FASHION = "configs/fashion_mnist.yaml"
NO_FASHION = "data.path=/nonexistent/fashion-mnist"  # loading it would fail: nothing may
RESUME = ["train", CLS, "train.epochs=3", "--resume", "{dir}"]


class Done(NamedTuple):
    """A finished ``fmlp`` command."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return os.environ | {
        "JAX_PLATFORMS": "cpu",  # the bitwise resume contract is stated for the CPU
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def fmlp_command(*args: str, env: dict[str, str], timeout: float = 600) -> Done:
    """Run ``fmlp ARGS`` in the repository root, with pipes as in a CI log."""
    start = time.monotonic()
    result = subprocess.run(
        [str(FMLP), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Done(result.returncode, result.stdout, result.stderr, time.monotonic() - start)


def run_all(jobs: dict[str, tuple[str, ...]], env: dict[str, str]) -> dict[str, Done]:
    """Run each job's ``fmlp`` command, two at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(fmlp_command, *args, env=env) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert "Check failure" not in stderr, stderr
    assert not re.search(r"^\s*@ +0x", stderr, re.MULTILINE), stderr  # a C++ stack


def error_line(done: Done, command: str = "train") -> str:
    """The one line of stderr, ``fmlp COMMAND: error: ...``; nothing else was printed."""
    clean(done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fmlp {command}: error: "), lines[0]
    return lines[0]


def warning_lines(done: Done) -> list[str]:
    """stderr of a run that succeeded: only ``fmlp: warning:`` lines (checked), returned."""
    clean(done.stderr)
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("fmlp: warning: ") for line in lines), done.stderr
    return lines


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"  # the run's lock: who holds it, not saved work
    }


def settled(snap: dict[str, tuple[bytes, int]]) -> dict[str, tuple[bytes, int]]:
    """A snapshot of a run caught mid-write, without what was still being written."""
    return {
        rel: value
        for rel, value in snap.items()
        if "orbax-checkpoint-tmp" not in rel and not Path(rel).name.endswith(".tmp")
    }


def assert_saved_files_kept(run_dir: Path, before: dict[str, tuple[bytes, int]]) -> None:
    """Every file of ``before`` (a run caught while training) is unchanged, except that
    ``metrics.jsonl`` and ``metrics.csv`` may have grown by the epochs in flight and a
    checkpoint step may have been pruned whole (``train.keep_checkpoints``) by a newer one."""
    after = snapshot(run_dir)
    for rel, (payload, mtime) in settled(before).items():
        parts = Path(rel).parts
        if rel in ("metrics.jsonl", "metrics.csv"):
            complete = payload[: payload.rfind(b"\n") + 1]
            assert after[rel][0].startswith(complete), (complete, after[rel][0])
        elif parts[0] == "checkpoints" and not (run_dir / Path(*parts[:3])).is_dir():
            continue  # the whole step was pruned after a newer one was saved
        else:
            assert after.get(rel) == (payload, mtime), f"{rel} changed"


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_params_equal(a: Any, b: Any) -> None:
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    chex.assert_trees_all_equal(a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def in_process(monkeypatch):
    """``fmlp.cli.main`` in this process: undo its global warning format afterwards."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.chdir(ROOT)
    return cli.main


# ----------------------------------------------------------------------------- trained runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env) -> dict[str, tuple[Path, Done]]:
    """lecture_classification: 2 epochs (damaged copies resume it), 3 epochs in one go (the
    reference), and 2 epochs without a validation split."""
    base = tmp_path_factory.mktemp("trained")
    jobs = {
        "two": (CLS, "train.epochs=2"),
        "three": (CLS, "train.epochs=3"),
        "no val": (CLS, "train.epochs=2", "data.validation_fraction=0"),
    }
    done = run_all(
        {name: ("train", *args, "--out", str(base / name)) for name, args in jobs.items()}, env
    )
    return {name: (base / name, done[name]) for name in jobs}


@pytest.fixture(scope="module")
def base_run(trained) -> Path:
    run_dir, done = trained["two"]
    assert done.returncode == 0, done.stderr
    assert sorted(int(p.name) for p in (run_dir / "checkpoints" / "latest").iterdir()) == [1, 2]
    return run_dir


@pytest.fixture(scope="module")
def reference(trained) -> tuple[Any, list[dict[str, Any]]]:
    """The 3-epoch run trained in one go: its final params and metrics (without timings)."""
    run_dir, done = trained["three"]
    assert done.returncode == 0, done.stderr
    return fmlp.run.restore_params(run_dir), without_seconds(read_rows(run_dir / "metrics.jsonl"))


def test_no_validation_split_trains_to_the_end(trained):
    run_dir, done = trained["no val"]
    assert done.returncode == 0, done.stderr
    assert not warning_lines(done)
    rows = read_rows(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["val_loss"] is None and row["val_accuracy"] is None for row in rows), rows
    assert all(row["train_loss"] > 0 for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1


# ----------------------------------------------------------------------------- damaged runs


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def truncate_metadata(run_dir: Path) -> None:
    # orbax's tree metadata (JSON): for this small net, the largest file of the step.
    truncate(run_dir / "checkpoints" / "latest" / "2" / "state" / "_METADATA")


def truncate_array_data(run_dir: Path) -> None:
    # The OCDBT data file the arrays are read from.
    state = run_dir / "checkpoints" / "latest" / "2" / "state" / "d"
    truncate(max(state.iterdir(), key=lambda p: p.stat().st_size))


def only_checkpoint_truncated(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoints" / "latest" / "1")
    truncate_array_data(run_dir)


def append(text: str):
    def damage(run_dir: Path) -> None:
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(text)

    return damage


def remove(name: str):
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


DAMAGE = {
    # name: (what is done to a copy of the 2-epoch run, the command run on it)
    "no checkpoints": (remove("checkpoints"), RESUME),
    "no latest checkpoints": (remove("checkpoints/latest"), RESUME),
    "no config, --out": (remove("config.yaml"), ["train", CLS, "train.epochs=3", "--out", "{dir}"]),
    "no config, --resume": (remove("config.yaml"), RESUME),
    "changed model": (None, [*RESUME, "model.hidden=[5]"]),
    "more devices than there are": (None, [*RESUME, "parallel.data=65536"]),
    "--out with --resume": (None, ["train", CLS, "--out", "{dir}-new", "--resume", "{dir}"]),
    "locked": (None, RESUME),
    "torn last line": (append('{"epoch": 3, "train_lo'), RESUME),
    "empty object last line": (append("{}\n"), RESUME),
    "truncated metadata": (truncate_metadata, RESUME),
    "truncated array data": (truncate_array_data, RESUME),
    "eval of a truncated only checkpoint": (only_checkpoint_truncated, ["eval", "{dir}"]),
}


class Damaged(NamedTuple):
    dir: Path
    before: dict[str, tuple[bytes, int]]  # after the damage, before the command
    done: Done


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, base_run, env) -> dict[str, Damaged]:
    """Each DAMAGE case on its own copy of the 2-epoch run; ``locked``'s run is locked by
    this process meanwhile, as a running fmlp would."""
    base = tmp_path_factory.mktemp("damaged")
    dirs, before = {}, {}
    for i, (name, (damage, _)) in enumerate(DAMAGE.items()):
        dirs[name] = base / f"case{i}"
        shutil.copytree(base_run, dirs[name])
        if damage is not None:
            damage(dirs[name])
        before[name] = snapshot(dirs[name])
    lock = os.open(dirs["locked"] / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(lock, 0)
        os.write(lock, f"pid {os.getpid()} on the test\n".encode())
        jobs = {
            name: tuple(a.format(dir=dirs[name]) for a in args)
            for name, (_, args) in DAMAGE.items()
        }
        done = run_all(jobs, env)
    finally:
        os.close(lock)
    return {name: Damaged(dirs[name], before[name], done[name]) for name in DAMAGE}


def refused(case: Damaged, *fragments: str, command: str = "train") -> str:
    """The case exited 2 with one line holding ``fragments``, and changed nothing."""
    assert case.done.returncode == 2, (case.done.stdout, case.done.stderr)
    line = error_line(case.done, command)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert snapshot(case.dir) == case.before
    assert not list(case.dir.parent.glob(".*partial*")), "a staging folder was left behind"
    return line


def test_resume_without_checkpoints_is_refused_untouched(damaged):
    case = damaged["no checkpoints"]
    refused(case, str(case.dir), "logs 2 epochs", "no checkpoint", "nothing to resume")


def test_resume_without_latest_checkpoints_points_to_the_best_one(damaged):
    # checkpoints/best still holds epoch 1: the message says so, and nothing is retrained.
    case = damaged["no latest checkpoints"]
    refused(case, str(case.dir), "nothing to resume", "checkpoints/best", "fmlp eval", "--best")


def test_out_into_a_run_that_lost_its_config_is_refused_untouched(damaged):
    case = damaged["no config, --out"]
    refused(case, str(case.dir), "not empty", "restore its config.yaml")


def test_resume_of_a_run_that_lost_its_config_is_refused_untouched(damaged):
    case = damaged["no config, --resume"]
    refused(case, str(case.dir), "holds checkpoints but lost its config.yaml")


def test_out_with_resume_is_refused_untouched(damaged):
    case = damaged["--out with --resume"]
    refused(case, "--out", "--resume", "cannot go together")
    assert not Path(f"{case.dir}-new").exists()


def test_resume_of_a_run_in_use_is_refused_untouched(damaged):
    case = damaged["locked"]
    refused(case, str(case.dir), "in use by fmlp", f"pid {os.getpid()} on the test")


@pytest.mark.parametrize(
    ("name", "key"),
    [("changed model", "model.hidden"), ("more devices than there are", "parallel.data")],
)
def test_a_failed_resume_keeps_the_run_usable(damaged, env, name, key):
    # One refused by the config check, one later (the device layout), after the run's lock.
    case = damaged[name]
    refused(case, key)
    assert config.load(case.dir / "config.yaml").train.epochs == 2  # not the asked-for 3
    kept = {n: case.before[n] for n in ("config.yaml", "model.json", "metrics.jsonl")}
    done = fmlp_command("eval", str(case.dir), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["split"] == "test"
    assert {n: snapshot(case.dir)[n] for n in kept} == kept


def check_resumed(case: Damaged, reference: tuple[Any, list[dict]], restored: int) -> None:
    """The resume continued from epoch ``restored`` and ended where the reference did."""
    ref_params, ref_rows = reference
    assert case.done.returncode == 0, case.done.stderr
    assert_params_equal(fmlp.run.restore_params(case.dir), ref_params)
    lines = (case.dir / "metrics.jsonl").read_text().splitlines()
    assert without_seconds([json.loads(line) for line in lines]) == ref_rows
    # The restored epochs were not trained again: their lines, timings included, are kept.
    before = case.before["metrics.jsonl"][0].decode().splitlines()
    assert lines[:restored] == before[:restored]
    after = snapshot(case.dir)
    for name in ("model.json", "normalizer.npz"):
        assert after[name] == case.before[name], name
    saved = config.load(case.dir / "config.yaml")  # the same, but for the new train.epochs
    assert config.to_dict(saved) == config.to_dict(config.load(ROOT / CLS, ["train.epochs=3"]))


@pytest.mark.parametrize("name", ["torn last line", "empty object last line"])
def test_resume_skips_a_torn_last_metrics_line(damaged, reference, name):
    case = damaged[name]
    (warning,) = warning_lines(case.done)
    assert "metrics.jsonl" in warning and "skipped its last line" in warning, warning
    check_resumed(case, reference, restored=2)


@pytest.mark.parametrize("name", ["truncated metadata", "truncated array data"])
def test_resume_falls_back_from_a_truncated_checkpoint(damaged, reference, name):
    case = damaged[name]
    (warning,) = warning_lines(case.done)  # and no traceback from orbax's threads
    assert "epoch 2 is damaged" in warning and "resuming from epoch 1" in warning, warning
    latest = case.dir / "checkpoints" / "latest"
    assert f"{latest / '2'}.damaged" in warning, warning
    # The damaged step is kept, byte for byte, beside the checkpoints.
    moved = {
        rel.replace("checkpoints/latest/2/", "checkpoints/latest/2.damaged/", 1): value
        for rel, value in case.before.items()
        if rel.startswith("checkpoints/latest/2/")
    }
    after = snapshot(case.dir)
    assert {rel: after.get(rel) for rel in moved} == moved
    check_resumed(case, reference, restored=1)


def test_eval_of_a_run_whose_only_checkpoint_is_truncated(damaged):
    case = damaged["eval of a truncated only checkpoint"]
    refused(case, str(case.dir / "checkpoints" / "latest"), command="eval")


# ----------------------------------------------------------------------------- signals


class Signalled(NamedTuple):
    dir: Path
    before: dict[str, tuple[bytes, int]]  # the run when the signal came
    done: Done


def train_and_signal(
    run_dir: Path, signum: int, *, epochs: int, after_lines: int, env: dict[str, str]
) -> Signalled:
    """Start ``fmlp train`` on digits; once ``run_dir`` exists (the compile comes right after)
    or, with ``after_lines``, once metrics.jsonl has that many lines, freeze it, snapshot its
    run, send ``signum`` and let it go on."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(FMLP), "train", DIGITS, f"train.epochs={epochs}", "--out", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    try:
        while not (
            run_dir.is_dir() and (not after_lines or metrics.read_text().count("\n") >= after_lines)
        ):
            if proc.poll() is not None:
                pytest.fail(f"fmlp train ended ({proc.returncode}) first: {proc.stderr.read()}")
            if time.monotonic() - start > 300:
                pytest.fail("the run did not get far enough in 300 s")
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        before = snapshot(run_dir)
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return Signalled(run_dir, before, Done(proc.returncode, stdout, stderr, 0.0))


SIGINTS = 3  # the compile-time Ctrl-C used to be lost 2 times in 3


@pytest.fixture(scope="module")
def signalled(tmp_path_factory, env) -> dict[str, Signalled]:
    base = tmp_path_factory.mktemp("signals")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            f"SIGINT {i}": pool.submit(
                train_and_signal,
                base / f"int{i}",
                signal.SIGINT,
                epochs=200,
                after_lines=0,
                env=env,
            )
            for i in range(SIGINTS)
        }
        futures["SIGTERM"] = pool.submit(
            train_and_signal, base / "term", signal.SIGTERM, epochs=2000, after_lines=1, env=env
        )
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("i", range(SIGINTS))
def test_ctrl_c_at_compile_time_stops_with_one_line(signalled, i):
    case = signalled[f"SIGINT {i}"]
    assert case.done.returncode == 130, case.done.stderr
    clean(case.done.stderr)
    lines = case.done.stderr.strip().splitlines()
    assert len(lines) == 1, case.done.stderr
    assert lines[0].startswith("fmlp train: stopped by SIGINT (Ctrl-C)."), lines[0]
    latest = case.dir / "checkpoints" / "latest"
    steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    if steps:  # the signal came after the compile: it names what is kept
        assert f"(epoch {steps[-1]}) is kept in {case.dir}" in lines[0], lines[0]
    else:
        assert lines[0].endswith("No checkpoint had been written yet."), lines[0]
    assert not (case.dir / "summary.json").exists()
    assert_saved_files_kept(case.dir, case.before)


def test_sigterm_keeps_the_last_checkpoint_and_resume_continues(signalled, env):
    case = signalled["SIGTERM"]
    assert case.done.returncode == 143, case.done.stderr
    clean(case.done.stderr)
    lines = case.done.stderr.strip().splitlines()
    assert len(lines) == 1, case.done.stderr
    match = re.fullmatch(
        r"fmlp train: stopped by SIGTERM\. The last complete checkpoint \(epoch (\d+)\) is kept "
        r"in (.+); continue with --resume (.+)\.",
        lines[0],
    )
    assert match, lines[0]
    epoch = int(match.group(1))
    assert match.group(2) == match.group(3) == str(case.dir)
    assert_saved_files_kept(case.dir, case.before)
    logged = (case.dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in logged] == list(range(1, epoch + 1))
    steps = [int(p.name) for p in (case.dir / "checkpoints" / "latest").iterdir()]
    assert max(steps) == epoch

    done = fmlp_command(
        "train", DIGITS, f"train.epochs={epoch + 2}", "--resume", str(case.dir), env=env
    )
    assert done.returncode == 0, done.stderr
    lines = (case.dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epoch + 3))
    assert lines[:epoch] == logged  # continued from the checkpoint, not from scratch
    assert json.loads((case.dir / "summary.json").read_text())["epochs"] == epoch + 2


# ----------------------------------------------------------------------------- concurrency


def test_two_trainings_into_one_directory(tmp_path, env):
    run_dir = tmp_path / "run"
    args = ["train", CLS, "train.epochs=2", "--out", str(run_dir)]
    procs = [
        subprocess.Popen(
            [str(FMLP), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    done = [Done(p.returncode, *output, 0.0) for p, output in zip(procs, outputs)]
    assert sorted(d.returncode for d in done) == [0, 2], [d.stderr for d in done]
    loser = next(d for d in done if d.returncode == 2)
    line = error_line(loser)
    assert re.search(r"already holds a run|filled by another process|in use", line), line
    assert str(run_dir) in line
    # The finished run is whole, and only it is there.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [row["epoch"] for row in read_rows(run_dir / "metrics.jsonl")] == [1, 2]
    for name in ("config.yaml", "model.json", "normalizer.npz", "summary.json"):
        assert (run_dir / name).is_file(), name
    done = fmlp_command("eval", str(run_dir), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(
        json.loads((run_dir / "summary.json").read_text())["test_accuracy"], abs=1e-6
    )


# ----------------------------------------------------------------------------- distributed


@pytest.fixture(scope="module")
def distributed(tmp_path_factory, env) -> dict[str, tuple[Path, Done]]:
    base = tmp_path_factory.mktemp("distributed")
    common = (CLS, "train.epochs=2", "distributed.num_processes=2")
    jobs = {
        "unreachable coordinator": (
            f"distributed.coordinator_address=127.0.0.1:{free_port()}",
            "distributed.process_id=1",
            "distributed.initialization_timeout=3",
        ),
        "peer never comes": (
            f"distributed.coordinator_address=127.0.0.1:{free_port()}",
            "distributed.process_id=0",
            "distributed.initialization_timeout=5",
        ),
    }
    done = run_all(
        {
            name: ("train", *common, *extra, "--out", str(base / f"run{i}"))
            for i, (name, extra) in enumerate(jobs.items())
        },
        env,
    )
    return {name: (base / f"run{i}", done[name]) for i, name in enumerate(jobs)}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("unreachable coordinator", "cannot reach the coordinator"),
        ("peer never comes", "distributed runtime stopped this process"),
    ],
)
def test_a_lost_peer_ends_with_one_line(distributed, name, fragment):
    run_dir, done = distributed[name]
    assert done.returncode == 1, done.stderr
    line = error_line(done)
    assert fragment in line, line
    assert done.seconds < 120
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- hostile input


def alias_bomb() -> str:
    """A few KB of YAML under model.hidden that expands to 30**12 values."""
    width, depth = 30, 12
    levels = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    return "model:\n  hidden: [" + ", ".join(levels) + "]\ndata:\n  name: digits\n"


HOSTILE = {
    # name: (args, fragments of the message); {x} are the files of the hostile fixture
    "alias bomb": (["train", "{bomb}"], ["{bomb}", "aliases"]),
    "list nested 20,000 deep": (["train", "{deep}"], ["{deep}", "nested deeper"]),
    "empty config file": (["train", "{empty}"], ["{empty}", "is empty"]),
    "negative seed": (["train", DIGITS, "train.seed=-1"], ["train.seed", "-1"]),
    "seed beyond uint32": (["train", DIGITS, "train.seed=4294967296"], ["train.seed"]),
    "seed with a leading zero": (["train", DIGITS, "train.seed=010"], ["train.seed", "010"]),
    "huge batch": (["train", DIGITS, "train.batch_size=1000000000000"], ["train.batch_size"]),
    "huge width": (["train", DIGITS, "model.hidden=[100000000]"], ["model.hidden"]),
    "huge synthetic set": (
        ["train", DIGITS, "data.synthetic_examples=10000000000"],
        ["data.synthetic_examples"],
    ),
    "run name with ..": (["train", DIGITS, "run.name=../../x"], ["run.name"]),
    "coordinator without port": (
        ["train", DIGITS, "distributed.coordinator_address=localhost"],
        ["distributed.coordinator_address"],
    ),
    "batch larger than the training set": (
        ["train", DIGITS, "train.batch_size=5000"],
        ["train.batch_size=5000"],
    ),
    "net larger than memory": (
        ["train", DIGITS, "model.hidden=[1048576,1048576]"],
        ["model.hidden", "GiB"],
    ),
    "--out is a file": (["train", FASHION, NO_FASHION, "--out", "{file}"], ["{file}", "is a file"]),
    "--out below a file": (
        ["train", FASHION, NO_FASHION, "--out", "{file}/run"],
        ["{file}/run", "is below the file {file}"],
    ),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, env) -> tuple[dict[str, Done], dict[str, str], Path, dict]:
    base = tmp_path_factory.mktemp("hostile")
    files = {"bomb": base / "bomb.yaml", "deep": base / "deep.yaml", "empty": base / "empty.yaml"}
    files["bomb"].write_text(alias_bomb())
    files["deep"].write_text("model:\n  hidden: " + "[" * 20_000 + "]" * 20_000 + "\n")
    files["empty"].write_text("")
    files["file"] = base / "afile"
    files["file"].write_text("not a directory\n")
    names = {key: str(path) for key, path in files.items()}
    before = snapshot(base)
    jobs = {}
    for i, (name, (args, _)) in enumerate(HOSTILE.items()):
        args = [a.format(**names) for a in args]
        if "--out" not in args:
            args += ["--out", str(base / f"new{i}")]
        jobs[name] = tuple(args)
    return run_all(jobs, env), names, base, before


def test_hostile_alias_bomb_is_small_and_fast(hostile):
    assert len(alias_bomb()) < 8000
    done = hostile[0]["alias bomb"]
    assert done.returncode == 2, done.stderr
    assert len(error_line(done)) < 500
    assert done.seconds < 30


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_exits_2_naming_the_key(hostile, name):
    results, names, base, before = hostile
    done = results[name]
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = error_line(done)
    assert len(line) < 500, line
    for fragment in HOSTILE[name][1]:
        assert fragment.format(**names) in line, (fragment, line)
    assert done.seconds < 30  # refused before any training (or any data, for --out)
    assert snapshot(base) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(Path(p).name for p in names.values())


# ----------------------------------------------------------------------------- IDX files


def idx_header(*dims: int, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_idx_that_inflates_beyond_its_header_is_refused_without_inflating(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip member
    with path.open("wb") as f:
        f.write(deflate.compress(idx_header(10, 4) + bytes(40)))
        zeros = bytes(1 << 20)
        for _ in range(100):  # 100 MiB of zeros after the 10 x 4 bytes the header announces
            f.write(deflate.compress(zeros))
        f.write(deflate.flush())
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match="trailing bytes") as err:
            data.read_idx(path)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert seconds < 2
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated"


def test_idx_with_no_examples_is_refused(tmp_path):
    path = tmp_path / "empty-idx1-ubyte"
    path.write_bytes(idx_header(0, 4))
    with pytest.raises(DataError, match="0 examples") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_idx_announcing_more_than_the_memory_is_refused(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(idx_header(2**31, 2**31) + bytes(64))
    with pytest.raises(DataError, match=r"GiB") as err:
        data.read_idx(path)
    assert str(path) in str(err.value) and "memory" in str(err.value)


# ----------------------------------------------------------------------------- storage faults


def test_read_only_storage_exits_1_with_one_line(tmp_path, monkeypatch, capsys, in_process):
    # Root ignores permission bits, so the read-only file system is simulated.
    read_only = tmp_path / "ro"
    read_only.mkdir()

    def inside(path: Any) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return path == read_only or read_only in path.parents

    def refuse(path: Any) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_open = Path.mkdir, os.open

    def mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False):
        if inside(self) and not self.exists():
            raise refuse(self)
        return real_mkdir(self, mode, parents, exist_ok)

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    # The storage is reported before the data is read (there is none at data.path).
    status = in_process(["train", FASHION, NO_FASHION, "--out", str(read_only / "run")])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    line = error_line(Done(status, captured.out, captured.err, 0.0))
    assert "Read-only file system" in line and str(read_only / "run") in line, line
    assert not list(read_only.iterdir())


@pytest.fixture
def fault_from_epoch_2(monkeypatch):
    """Patch ``owner.name`` to raise ``err`` once it is called for epoch 2 (``epoch_of`` its
    positional arguments), recording a snapshot of ``run_dir`` when the fault happens."""
    at_fault: dict[str, Any] = {}

    def install(owner: Any, name: str, run_dir: Path, epoch_of: Any) -> dict[str, Any]:
        real = getattr(owner, name)

        def faulty(self: Any, *args: Any, **kwargs: Any) -> Any:
            if epoch_of(*args) >= 2:
                at_fault.setdefault("before", snapshot(run_dir))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, faulty)
        return at_fault

    return install


@pytest.mark.parametrize(
    "where",
    [
        "Checkpointer.save",  # the whole save fails
        "orbax's write",  # what a full disk does: orbax fails inside Checkpointer.save
    ],
)
def test_disk_full_during_a_checkpoint(tmp_path, capsys, in_process, fault_from_epoch_2, where):
    run_dir = tmp_path / "run"
    owner = checkpoint.Checkpointer if where == "Checkpointer.save" else ocp.CheckpointManager
    at_fault = fault_from_epoch_2(owner, "save", run_dir, lambda epoch, *rest: epoch)
    status = in_process(["train", CLS, "train.epochs=3", "--out", str(run_dir)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    line = error_line(Done(status, captured.out, captured.err, 0.0))
    assert "No space left on device" in line, line
    assert "checkpoint of epoch 2" in line and str(run_dir) in line, line
    assert re.search(r"\bepoch 1\b.*\bkept\b", line), line  # and what is safe
    assert snapshot(run_dir) == at_fault["before"]
    assert fmlp.run.RunDir(run_dir).checkpointer().latest_epoch() == 1
    params = fmlp.run.restore_params(run_dir)
    assert [layer["W"].shape for layer in params] == [(2, 32), (32, 3)]


def test_disk_full_while_logging_metrics(tmp_path, capsys, in_process, fault_from_epoch_2):
    run_dir = tmp_path / "run"
    epoch_of = lambda row, columns: row["epoch"]
    at_fault = fault_from_epoch_2(fmlp.run.RunDir, "append_metrics", run_dir, epoch_of)
    status = in_process(["train", CLS, "train.epochs=3", "--out", str(run_dir)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    line = error_line(Done(status, captured.out, captured.err, 0.0))
    assert "No space left on device" in line, line
    assert str(run_dir) in line, line  # which storage is full
    assert snapshot(run_dir) == at_fault["before"]
    assert [row["epoch"] for row in read_rows(run_dir / "metrics.jsonl")] == [1]
    assert fmlp.run.RunDir(run_dir).checkpointer().latest_epoch() == 1
    fmlp.run.restore_params(run_dir)


def test_eval_prints_its_metrics_before_a_storage_error(
    tmp_path, base_run, monkeypatch, capsys, in_process
):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    before = snapshot(run_dir)

    def write_eval(self: Any, split: str, report: dict) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path / f"eval_{split}.json"))

    monkeypatch.setattr(fmlp.run.RunDir, "write_eval", write_eval)
    status = in_process(["eval", str(run_dir)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    report = json.loads(captured.out)
    assert report["split"] == "test" and 0 <= report["accuracy"] <= 1
    line = error_line(Done(status, captured.out, captured.err, 0.0), "eval")
    assert "Read-only file system" in line and str(run_dir) in line, line
    after = snapshot(run_dir)
    unplotted = lambda snap: {k: v for k, v in snap.items() if not k.startswith("plots/")}
    assert unplotted(after) == unplotted(before)  # the plots are redrawn before the report


# ----------------------------------------------------------------------------- the library


def test_load_without_the_normalizer_refuses(tmp_path, base_run):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    (run_dir / "normalizer.npz").unlink()
    before = snapshot(run_dir)
    with pytest.raises(RunDirectoryError, match=r"normalizer\.npz") as err:
        fmlp.load(run_dir)
    assert str(run_dir / "normalizer.npz") in str(err.value)
    assert snapshot(run_dir) == before


def test_grad_through_an_array_method_names_it():
    with pytest.raises(fmlp.NonDifferentiableError, match=r"\.reshape\(\)"):
        fmlp.grad(lambda x: gates.sum(x.reshape(-1)))(jnp.ones((2, 3), jnp.float32))
