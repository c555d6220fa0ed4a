"""Several JAX processes equal one process: 2 processes x 2 CPU devices (joined over gloo on
localhost by `rlvr_jax.launch`) against 1 process x 4 devices, for training (with and without a
judge model in the loop, evaluation, export, checkpoints), sampling, scoring and evaluation; a
kill -9 of the job resumed; a dead process ending the job.

Each process start costs seconds of JAX import and compiles on a small CPU box, so the checks
share few jobs: `multihost_job.py` does all the work of one side in one process start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_hf_tokenizer

from rlvr_jax import launch
from rlvr_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import multihost_job  # noqa: E402

TOL = 1e-5
LAUNCH = [sys.executable, "-m", "rlvr_jax.launch", "--processes", "2", "--devices-per-process",
          "2", "--"]  # fmt: skip
TINY_CMD = [sys.executable, "-m", "rlvr_jax.train", "--config", "configs/tiny.py",
            *multihost_job.tiny_overrides()]  # fmt: skip


def _env(devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    env["PYTHONPATH"] = str(ROOT)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _strip_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]


def _assert_close(a, b, where: str) -> None:
    """Equal structure; numbers within TOL; everything else equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (where, sorted(a), sorted(b))
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(float(a) - float(b)) <= TOL, (where, a, b)
    else:
        assert a == b, (where, a, b)


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random model whose byte-level vocabulary has single YES / NO tokens (so it can
    judge), question rows, prompts to sample and rows to score."""
    from rlvr_jax.models.config import ModelConfig
    from rlvr_jax.models.model_dir import save_model
    from rlvr_jax.models.transformer import init_model
    from rlvr_jax.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("multihost")
    hf = make_tiny_hf_tokenizer()
    hf.add_tokens(["YES", "NO"])
    tok = Tokenizer(hf)
    cfg = ModelConfig(
        model_type="llama", vocab_size=len(hf), hidden_size=32, intermediate_size=64,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False,
        eos_token_id=tuple(tok.stop_ids), pad_token_id=tok.pad_id,
    )  # fmt: skip
    graphdef, state = init_model(cfg, seed=0)
    model = save_model(root / "model", cfg, state, tok)
    rows = [{"id": f"q{i}", "query": [{"role": "user", "content": f"Question {i}: name {i}?"}],
             "label": ["YES", "NO", "demand", "42"][i % 4], "subject": "economics"}
            for i in range(8)]  # fmt: skip
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"prompt": f"Say {w}."} for w in ("one", "two words", "a longer prompt here", "x")]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    qa = [{"question": f"What is {i}?", "reference": str(i), "response": f"It is {i * (i % 2)}"}
          for i in range(6)]  # fmt: skip
    (root / "to_score.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    for split, n in (("train", 6), ("test", 2)):  # judge rows for a tiny distillation
        jr = [{"id": f"d-{split}-{i}", "query": [{"role": "user", "content": f"Q{i}: item {i}?"}],
               "label": f"zeta{i}", "subject": "economics", "rephrasings": [f"the zeta {i}"],
               "distractors": [f"omega{i}a", f"omega{i}b"]} for i in range(n)]  # fmt: skip
        (root / f"distill_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jr))
    return {"root": root, "model": model, "data": root / "data.jsonl"}


def _job(out: Path, inputs: dict, processes: int) -> subprocess.CompletedProcess:
    args = [str(ROOT / "tests" / "multihost_job.py"), str(out), str(inputs["model"]),
            str(inputs["data"])]  # fmt: skip
    if processes == 1:
        cmd, env = [sys.executable, *args], _env(4)
    else:
        cmd, env = [*LAUNCH, sys.executable, *args], _env()
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def jobs(inputs) -> dict[str, Path]:
    """The job on 1 process x 4 devices and on 2 processes x 2 devices, with wall times."""
    out = {}
    for n in (1, 2):
        d = inputs["root"] / f"p{n}"
        t0 = time.perf_counter()
        proc = _job(d, inputs, n)
        wall = time.perf_counter() - t0
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        print(f"multihost job on {n} process(es): {wall:.1f} s", file=sys.stderr)
        out[n] = d
    return out


def test_two_processes_equal_one(jobs):
    one, two = jobs[1], jobs[2]
    assert json.loads((two / "done.json").read_text()) == {"processes": 2}
    for run in ("tiny", "judged"):  # every step's metrics, eval included
        a = _strip_times(read_metrics(one / run / "metrics.jsonl"))
        b = _strip_times(read_metrics(two / run / "metrics.jsonl"))
        # Step 0 is the held-out evaluation before any update.
        assert [r["step"] for r in b] == list(range(len(a))) and len(a) > 2
        _assert_close(a, b, run)
    assert "eval/soft" in a[-1] and "kl/mean" in a[-1]  # the judge and the reference ran
    # Checkpoints: the same steps kept, written once into one directory by both processes.
    for run in ("tiny", "judged"):
        kept = [sorted(p.name for p in (d / run / "checkpoints").iterdir()) for d in (one, two)]
        assert kept[0] == kept[1] and kept[1], kept
    # The HF export: complete, with weights equal to the one-process export.
    from safetensors.numpy import load_file

    wa = load_file(one / "judged" / "hf" / "model.safetensors")
    wb = load_file(two / "judged" / "hf" / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=TOL, err_msg=k)
    assert not list((two / "judged").glob(".hf*"))  # no temporary export left behind
    # Sampling and scoring files.
    _assert_close(_jsonl(one / "samples.jsonl"), _jsonl(two / "samples.jsonl"), "samples")
    _assert_close(_jsonl(one / "scores.jsonl"), _jsonl(two / "scores.jsonl"), "scores")
    # Evaluation: results (less timings and the device line) and per-row files.
    ra, rb = (json.loads((d / "eval" / "results.json").read_text()) for d in (one, two))
    for r in (ra, rb):
        for k in ("time_s", "wall_time_s", "table", "files", "devices"):
            r.pop(k)
    _assert_close(ra, rb, "results")
    for name in ("results.generations.jsonl", "results.probes.jsonl"):
        _assert_close(_jsonl(one / "eval" / name), _jsonl(two / "eval" / name), name)
    # Distillation: process 0 alone trains (on one device, as on one process); both processes
    # returned its results; the run and the judge are written once.
    a, b = (_strip_times(read_metrics(d / "distill" / "metrics.jsonl")) for d in (one, two))
    assert len(a) >= 2 and [r["step"] for r in a] == [r["step"] for r in b]
    _assert_close(a, b, "distill")
    seen = [json.loads((two / f"distill_seen_p{i}.json").read_text()) for i in (0, 1)]
    assert seen[0] == seen[1] and seen[0]["steps"] >= 2, seen
    assert (two / "distill" / "judge" / "config.json").is_file()


def _children(pid: int) -> list[int]:
    """The launcher's child processes (one per JAX process)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def test_kill9_of_the_job_then_same_command_equals_uninterrupted(jobs):
    """kill -9 of both processes after the step-2 checkpoint; the same command resumes and its
    metrics equal those of the uninterrupted two-process run."""
    work = jobs[2].parent / "killed"
    cmd = [*LAUNCH, *TINY_CMD, f"--workdir={work}"]
    job = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    metrics, deadline = work / "metrics.jsonl", time.time() + 600
    while time.time() < deadline and job.poll() is None:
        # Step 2's checkpoint is complete once orbax has renamed it into place.
        if (work / "checkpoints" / "2").is_dir():
            break
        time.sleep(0.05)
    pids = _children(job.pid)
    assert len(pids) == 2, job.communicate()[0][-3000:]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    log = job.communicate(timeout=60)[0]
    assert job.returncode != 0 and "was killed by SIGKILL" in log, log[-3000:]
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "[p0] rlvr_jax: resumed" in again.stdout
    a = _strip_times(read_metrics(jobs[2] / "tiny" / "metrics.jsonl"))
    b = _strip_times(read_metrics(metrics))
    assert [r["step"] for r in b] == list(range(multihost_job.TINY_STEPS + 1))
    assert a == b  # identical: the same programs on the same devices


_COLLECTIVES = """
import os, time
import numpy as np, jax
from rlvr_jax import multihost, mesh
multihost.join()
x = jax.device_put(np.ones(8), mesh.batch_sharding(mesh.make_mesh(), (8,)))
# gloo sets up its communicators on the first collectives; a peer lost while they are set up is
# noticed only when gloo's 30 s rendezvous times out. The test is about a peer lost mid-run.
for _ in range(3):
    multihost.to_host(x)
print("ready", flush=True)
while True:
    multihost.to_host(x)
    time.sleep(0.01)
"""


def test_one_process_killed_the_other_exits_on_its_own(tmp_path):
    """No launcher: process 1 of a job in a loop of collectives is killed with SIGKILL; process 0
    stops with an error when its collective fails (a failing process exits at once: no wait at
    JAX's shutdown barrier for the dead peer)."""
    port = launch.free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COLLECTIVES],
            cwd=ROOT,
            env=launch.process_env(_env(), i, 2, port, 2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        for p in procs:  # wait for both to be in the loop (gloo prints lines of its own)
            assert p.stdout is not None
            while (line := p.stdout.readline()) and "ready" not in line:
                pass
            assert line, p.communicate()[0][-2000:]
        t0 = time.time()
        procs[1].kill()
        log = procs[0].communicate(timeout=90)[0]
        took = time.time() - t0
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, log[-2000:]
    assert "error: process 0 of 2 stopped on" in log.splitlines()[-1], log[-2000:]
    # Once gloo's connections are up, a dead peer's closed socket fails the next collective at
    # once; the bound leaves room for a loaded machine, far below JAX's 100 s heartbeat.
    assert took < 20, took
    print(f"survivor exited {took:.1f} s after its peer was killed: {log.splitlines()[-1]}")


def test_launcher_stops_the_job_when_one_process_fails(tmp_path, capsys):
    """Process 1 exits with code 3; process 0 (which would run for minutes) is stopped within the
    grace period, every line is prefixed, and the job's exit code is process 1's."""
    code = ("import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); "
            "print('rank', i, os.environ['JAX_NUM_PROCESSES'], os.environ['XLA_FLAGS'], "
            "flush=True); time.sleep(0.5 if i else 300); sys.exit(3 if i else 0)")  # fmt: skip
    t0 = time.time()
    rc = launch.launch([sys.executable, "-c", code], 2, devices_per_process=3, grace_s=5)
    took = time.time() - t0
    out, err = capsys.readouterr()
    assert rc == 3 and took < 20, (rc, took)
    assert "[p0] rank 0 2 --xla_force_host_platform_device_count=3" in out
    assert "[p1] rank 1 2 --xla_force_host_platform_device_count=3" in out
    assert "process 1 exited with code 3" in err and "p0 was killed by SIGTERM" in err


def test_process_env_replaces_the_device_count():
    env = launch.process_env(
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1"}, 1, 4, 1234, 2
    )
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("4", "1")
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]


def test_launcher_forwards_sigterm():
    """SIGTERM to the launcher reaches both processes (each in its own session, so a terminal's
    signal would not); the job ends at once and says so."""
    code = "import time; print('up', flush=True); time.sleep(120)"
    job = subprocess.Popen([*LAUNCH[:-1], "--", sys.executable, "-c", code], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert job.stdout is not None
    seen = {job.stdout.readline().split()[0] for _ in range(2)}
    assert seen == {"[p0]", "[p1]"}
    t0 = time.time()
    job.send_signal(signal.SIGTERM)
    err = job.communicate(timeout=30)[1]
    assert job.returncode != 0 and time.time() - t0 < 10
    assert "the job was stopped by SIGTERM" in err, err
