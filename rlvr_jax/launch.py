"""`python -m rlvr_jax.launch --processes 2 --devices-per-process 2 -- python -m rlvr_jax.train ...`

A local multi-process launcher in the spirit of `torchrun`: it starts the same command N times on
this machine as one JAX job, the way a cluster scheduler starts one process per host. It rehearses
a multi-host run on one machine (CPU devices talk over gloo on localhost) and runs the
multi-process tests in CI.

- It picks a free coordinator port and gives process i the environment JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID and XLA_FLAGS (--xla_force_host_platform_device_count), which
  `mesh.initialize_distributed` reads (every entry point joins through it).
- Each line a process prints comes out prefixed with "[pI] ".
- SIGINT / SIGTERM sent to the launcher go to every process.
- When one process fails (non-zero exit or killed), the others get SIGTERM, then SIGKILL after
  `--grace` seconds, and the launcher exits non-zero with one line naming the process that failed
  first: a dead peer never leaves the job hanging in a collective.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port that was free on localhost a moment ago (the coordinator binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(
    base: dict[str, str], index: int, count: int, port: int, devices: int | None
) -> dict[str, str]:
    """Process `index`'s environment: `base` plus the JAX coordinator variables and, when
    `devices` is given, XLA_FLAGS asking the CPU backend for that many devices (an earlier
    device-count flag in XLA_FLAGS is replaced)."""
    env = dict(base)
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    env["JAX_NUM_PROCESSES"] = str(count)
    env["JAX_PROCESS_ID"] = str(index)
    if devices is not None:
        flags = re.sub(rf"{_DEVICE_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_FLAG}={devices}"])
    return env


def _pump(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    """Copy a process's output to ours, line by line with its prefix (a carriage return, as a
    progress bar writes, ends a line too, so progress shows as it happens)."""
    buf = b""
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
        buf += chunk
        *lines, buf = re.split(rb"\r\n|\r|\n", buf)
        if lines:
            text = "".join(f"{prefix}{ln.decode(errors='replace')}\n" for ln in lines)
            with lock:
                sys.stdout.write(text)
                sys.stdout.flush()
    if buf:
        with lock:
            sys.stdout.write(f"{prefix}{buf.decode(errors='replace')}\n")
            sys.stdout.flush()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal_all(procs: Sequence[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def launch(
    cmd: Sequence[str],
    processes: int,
    devices_per_process: int | None = None,
    grace_s: float = 20.0,
    port: int | None = None,
) -> int:
    """Run `cmd` as `processes` JAX processes; returns the job's exit code (0 when all succeed).

    Each process runs in its own process group, so that stopping one stops its children too.
    """
    if processes < 1:
        raise SystemExit("error: --processes must be >= 1")
    if not cmd:
        raise SystemExit("error: no command to launch (put it after --)")
    port = port or free_port()
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    for i in range(processes):
        p = subprocess.Popen(
            list(cmd),
            env=process_env(dict(os.environ), i, processes, port, devices_per_process),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p, f"[p{i}] ", lock), daemon=True)
        t.start()
        pumps.append(t)

    received: list[int] = []

    def forward(sig, _frame):
        received.append(sig)
        _signal_all(procs, sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failed: tuple[int, int] | None = None
    deadline: float | None = None
    try:
        # poll() every process each round (it also records a finished one's exit code).
        while [p.poll() for p in procs].count(None):
            if failed is None:
                bad = [
                    (i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)
                ]
                if bad:
                    failed = bad[0]
                    _signal_all(procs, signal.SIGTERM)
                    deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                _signal_all(procs, signal.SIGKILL)
                deadline = None
            time.sleep(0.1)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in pumps:
        t.join(timeout=5)
    if failed is None:
        bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        failed = bad[0] if bad else None
    if failed is None:
        return 0
    i, code = failed
    if received:
        why = f"stopped by {signal.Signals(received[0]).name}"
        print(f"launch: error: the job was {why}; process {i} {_describe(code)}", file=sys.stderr)
    else:
        others = ", ".join(f"p{j} {_describe(p.returncode)}" for j, p in enumerate(procs) if j != i)
        print(
            f"launch: error: process {i} {_describe(code)}; stopped the others ({others})",
            file=sys.stderr,
        )
    return code if code > 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, cmd = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        prog="python -m rlvr_jax.launch",
        description="Run a command as several JAX processes on this machine (one job).",
        usage="%(prog)s [--processes N] [--devices-per-process D] [--grace S] -- COMMAND ...",
    )
    ap.add_argument("--processes", type=int, default=2, help="processes to start (default 2)")
    ap.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="CPU devices each process emulates (XLA_FLAGS); default: leave XLA_FLAGS alone",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=20.0,
        help="seconds the others get to stop after one fails, before SIGKILL (default 20)",
    )
    ap.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    args = ap.parse_args(argv)
    return launch(cmd, args.processes, args.devices_per_process, args.grace, args.port or None)


if __name__ == "__main__":
    sys.exit(main())
