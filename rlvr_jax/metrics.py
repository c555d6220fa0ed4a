"""Run metrics: one JSON line per step, TensorBoard events, and a PNG of the curves at the end."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax import atomic

CURVES = (
    ("reward/raw_mean", "reward (raw mean)"),
    ("kl/mean", "KL to reference"),
    ("rollout/response_len", "response length (tokens)"),
)


def _scalar(v: Any) -> float | int | None:
    try:
        x = np.asarray(v)
    except Exception:
        return None
    if x.size != 1:
        return None
    x = x.item()
    if isinstance(x, bool):
        return int(x)
    return x if isinstance(x, int) else float(x)


class MetricsWriter:
    """Appends step metrics to WORKDIR/metrics.jsonl and TensorBoard event files.

    On resume, `truncate_after(step)` drops lines written after the restored checkpoint, so the file
    reads exactly like an uninterrupted run's.
    """

    def __init__(self, workdir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.enabled = enabled
        self._tb = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Keep only records with record["step"] <= step (rewritten atomically)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        atomic.write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record scalars for `step`; non-scalars are dropped. Returns the record written."""
        rec: dict[str, Any] = {"step": int(step)}
        for k, v in sorted(metrics.items()):
            s = _scalar(v)
            if s is not None:
                rec[k] = s if not (isinstance(s, float) and not math.isfinite(s)) else str(s)
        if not self.enabled:
            return rec
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        return rec

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


class CompileMeter:
    """Seconds spent getting compiled XLA programs since the last `take()`: backend compiles and
    loads from the persistent compilation cache, as jax.monitoring reports them. A step that meets
    a new shape (a prompt-length bucket not seen before) compiles its rollout, reference and update
    programs again; logged as time/compile_s and time/compiles, that reads as compilation, not as a
    slow program."""

    EVENTS = (
        "/jax/core/compile/backend_compile_duration",
        "/jax/compilation_cache/cache_retrieval_time_sec",
    )

    def __init__(self) -> None:
        import jax.monitoring

        self.seconds, self.count = 0.0, 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_: Any) -> None:
        if event in self.EVENTS:
            self.seconds += float(duration)
            self.count += 1

    def take(self) -> dict[str, float | int]:
        """{"time/compile_s", "time/compiles"} since the last call; resets both."""
        out = {"time/compile_s": self.seconds, "time/compiles": self.count}
        self.seconds, self.count = 0.0, 0
        return out

    def close(self) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._on_event)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_curves(metrics_path: str | Path, out_png: str | Path) -> Path:
    """A PNG with reward, KL and response-length curves (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.2))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic.write_with(out_png, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return out_png
