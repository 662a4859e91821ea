"""The one training loop every stage uses: resume, steps, progress bar, status, checkpoints, deadline.

A stage is any object with ``name``, ``state_dict()``, ``load_state_dict(state)``,
``train_step(step) -> dict[str, float | Tensor]`` and optionally ``evaluate() -> dict[str, float]``.

With ``snapshot_every``, a stage with ``snapshot() -> dict[str, Tensor]`` (the weights a user would get)
writes them every that many steps to ``snapshots/step-NNNNNNNNN.safetensors``, all kept: a curve of small
candidates to choose from by eye (the sharpen stage's decoder, 1.7 MB each), where checkpoints are few.

A step's metrics may be device tensors: the loop reads them back only every ``log_every`` steps
(averaged over those steps on the device), so the host never waits for the GPU between steps and
queues the next step's work while the current one runs. A non-finite metric stops the run at the
next log step.

Ctrl-C (SIGINT) or SIGTERM during a run (in the main thread) is a request to stop: the loop finishes the step it is
in, writes a checkpoint, marks the status ``interrupted`` and raises ``KeyboardInterrupt``, so nothing trained is lost
and a pipeline does not go on to its next stage. A second signal acts at once, as without the loop.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from world_model.train.checkpoints import latest_checkpoint, load_sharded, save_checkpoint
from world_model.train.status import StatusFile, read_status

__all__ = ["Stage", "LoopOptions", "Warmup", "run_loop", "save_snapshot"]

log = logging.getLogger(__name__)


class Warmup:
    """A linear learning-rate warm-up over ``steps`` steps, from step 0 or, after :meth:`restart`, from the
    next step trained: a fresh optimiser on resumed weights (a slim) warms up again, as Adam's first updates are
    ~lr x sign(grad) for every weight (at the full rate one step drew a screen door over a trained decoder:
    bench/vae_grid.py)."""

    def __init__(self, steps: int):
        self.steps = max(1, int(steps))
        self._start: int | None = 0

    def restart(self) -> None:
        self._start = None

    def __call__(self, step: int) -> float:
        """The factor on the learning rate at ``step``, in (0, 1]."""
        if self._start is None:
            self._start = step
        return min(1.0, (step - self._start + 1) / self.steps)


class Stage(Protocol):
    name: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def train_step(self, step: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LoopOptions:
    """How long to train and how often to log, evaluate and checkpoint.

    ``deadline``: a ``time.time()`` value; the loop checkpoints and stops cleanly before it
    (leaving ``reserve_s`` seconds for the final checkpoint). ``checkpoint_minutes``: also checkpoint once this
    much wall time has passed since the last checkpoint (0: by steps only), so that a slow stage on a machine that
    can be taken away (session 31 lost ~4 GPU minutes of DMD, 190 steps at ~0.8 steps/s, before its step-500 checkpoint)
    leaves one every few minutes whatever its rate.
    """

    steps: int
    checkpoint_every: int = 500
    checkpoint_minutes: float = 0.0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    # evaluate once more before the first step (of a fresh or a resumed stage): where a carried model stood on this
    # run's held-out data, the curve's first point (session 37's memory stage fell 1.72 -> 1.47 dB from its step 500,
    # with no point before)
    eval_at_start: bool = False
    keep: int = 2
    deadline: float | None = None
    reserve_s: float = 30.0
    progress: bool = True
    snapshot_every: int = 0  # 0: none

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"checkpoint_minutes must be >= 0 (0: by steps only), got {self.checkpoint_minutes}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: none), got {self.snapshot_every}")


def save_snapshot(stage: Any, run_dir: Path, step: int) -> Path:
    """``stage.snapshot()`` to ``run_dir/snapshots/step-N.safetensors`` (written beside, then moved in)."""
    from safetensors.torch import save_file

    folder = run_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.safetensors"
    tmp = path.with_suffix(".writing")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in stage.snapshot().items()}, str(tmp))
    tmp.replace(path)
    return path


class _StopRequests:
    """While entered (in the main thread), the first SIGINT or SIGTERM sets ``requested`` instead of acting and
    puts the previous handlers back, so that a second one acts as it would have."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, name: str):
        self.name = name
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        self._restore()
        log.warning(
            "%s: %s received: stopping after this step with a checkpoint (again to stop now)", self.name, self.requested
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def _evaluate(stage: Any) -> dict[str, float]:
    fn = getattr(stage, "evaluate", None)
    return dict(fn()) if fn is not None else {}


def run_loop(stage: Stage, run_dir: str | Path, opts: LoopOptions) -> dict[str, Any]:
    """Train ``stage`` to ``opts.steps`` (resuming from ``run_dir``'s latest checkpoint).

    Returns the final status dict; ``state`` is ``done`` or ``stopped`` (deadline reached).
    Exceptions are recorded in the status file (``state: failed``) and re-raised; a stop request (SIGINT,
    SIGTERM) checkpoints the last whole step first (``state: interrupted``) and raises ``KeyboardInterrupt``.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    if opts.snapshot_every and not callable(getattr(stage, "snapshot", None)):
        raise ValueError(f"snapshot_every={opts.snapshot_every}: the {stage.name} stage has no snapshot() to write")
    if opts.eval_at_start and not callable(getattr(stage, "evaluate", None)):
        raise ValueError(f"eval_at_start: the {stage.name} stage has no evaluate()")
    old_status = read_status(run_dir)  # read before the new status file replaces it
    status = StatusFile(run_dir, stage.name)
    step = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_sharded(ckpt)
        stage.load_state_dict(state["stage"])
        # a slimmed checkpoint (weights only) carries no step: its status file says where it stopped
        step = int(state["step"]) if "step" in state else int((old_status or {}).get("step") or 0)
        log.info("%s: resumed from %s (step %d)", stage.name, ckpt, step)
    status.update(state="running", step=step, total_steps=opts.steps, checkpoint=str(ckpt) if ckpt else None)

    saved_time = time.time()

    def checkpoint(at: int) -> None:
        nonlocal saved_time
        path = save_checkpoint({"stage": stage.state_dict(), "step": at}, run_dir, at, keep=opts.keep)
        status.update(checkpoint=str(path))
        saved_time = time.time()

    smoothed: dict[str, float] = {}
    window: dict[str, Any] = {}  # metric sums since the last log step (tensors stay on the device)
    counts: dict[str, int] = {}
    t0, s0 = time.time(), step
    saved_at = step
    final_state = "done"
    bar = tqdm(total=opts.steps, initial=step, desc=stage.name, disable=not opts.progress, dynamic_ncols=True)
    stop = _StopRequests(stage.name)
    try:
        with stop:
            if opts.eval_at_start and step < opts.steps:
                ev = _evaluate(stage)
                if ev:
                    status.log(step, "eval", ev)
                    status.update(eval=ev)
            while step < opts.steps:
                if stop.requested:
                    break
                if opts.deadline is not None and time.time() > opts.deadline - opts.reserve_s:
                    final_state = "stopped"
                    break
                metrics = stage.train_step(step)
                step += 1
                bar.update(1)
                for k, v in metrics.items():
                    window[k] = window[k] + v if k in window else v
                    counts[k] = counts.get(k, 0) + 1
                if step % opts.log_every == 0 or step == opts.steps:
                    metrics = {k: float(v) / counts[k] for k, v in window.items()}  # the one sync per log step
                    window, counts = {}, {}
                    for k, v in metrics.items():
                        if not math.isfinite(v):
                            raise FloatingPointError(f"{stage.name}: {k} is {v} at step {step}")
                        smoothed[k] = v if k not in smoothed else 0.7 * smoothed[k] + 0.3 * v
                    rate = (step - s0) / max(time.time() - t0, 1e-9)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in smoothed.items()})
                    status.log(step, "train", metrics)
                    status.update(
                        step=step, metrics=smoothed, steps_per_s=rate, eta_s=(opts.steps - step) / max(rate, 1e-9)
                    )
                if opts.eval_every and step % opts.eval_every == 0 and step < opts.steps:
                    ev = _evaluate(stage)
                    if ev:
                        status.log(step, "eval", ev)
                        status.update(eval=ev)
                due = opts.checkpoint_minutes and time.time() - saved_time >= 60 * opts.checkpoint_minutes
                if step % opts.checkpoint_every == 0 or due:
                    checkpoint(step)
                    saved_at = step
                if opts.snapshot_every and step % opts.snapshot_every == 0:
                    save_snapshot(stage, run_dir, step)
            if stop.requested and step < opts.steps:
                final_state = "interrupted"
            if step != saved_at or ckpt is None:
                checkpoint(step)
            ev = _evaluate(stage) if not stop.requested else {}
            if ev:
                status.log(step, "eval", ev)
            status.update(state=final_state, step=step, metrics=smoothed, eval=ev or status.data["eval"])
    except BaseException as e:
        status.update(state="failed", step=step, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    if stop.requested:  # also after the last step: a pipeline must not go on to its next stage
        raise KeyboardInterrupt(
            f"{stage.name}: {stop.requested} at step {step}; checkpoint {status.data['checkpoint']}"
        )
    return dict(status.data)
