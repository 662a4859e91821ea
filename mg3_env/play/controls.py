"""From a person's keys and mouse to one env action per chunk.

The page sends every change of its input (held keys, held arrow keys, mouse motion in degrees);
:class:`Controls` gathers them between two chunks and turns them into the action of the next chunk
(the release's one-action-per-chunk semantics, with per-frame rows where they help):

- keyboard: a key counts for the whole chunk when it is held when the action is taken, or was
  pressed at any time since the previous action (a short tap is never lost);
- look: mouse motion is summed in degrees; a held (or tapped) arrow key adds
  ``look_rate`` mouse units per frame over the chunk (the release's +-0.1 = 1.5 degrees per frame).
  The sum is spread evenly over the chunk's frames; an amount too small to pass the model's dead
  zone when spread over every frame goes on the first frames only, at just above the dead zone
  (per-frame mouse rows), so slow mouse motion still turns the camera; less than one frame's
  worth, and anything beyond 1 unit per frame, waits for the next chunk.
- pitch stays within ``pitch_limit`` degrees (the page's look limit; the release does not clamp).

Pure numpy; no clock, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Controls"]


class Controls:
    """Input gathered between chunks of one session.

    Args:
        keyboard_dim: keys of the action space (6 for the release).
        frames_per_chunk: frames of every chunk after the first.
        degrees_per_unit: degrees per frame of one mouse unit (15 in the release).
        deadzone: mouse values below this magnitude do not turn the camera (0.02 in the release).
        look_rate: mouse units per frame of a held arrow key.
        pitch_limit: the commanded pitch stays within +- this many degrees.
    """

    def __init__(
        self,
        keyboard_dim: int,
        frames_per_chunk: int,
        *,
        degrees_per_unit: float = 15.0,
        deadzone: float = 0.02,
        look_rate: float = 0.1,
        pitch_limit: float = 45.0,
    ) -> None:
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
        self.keyboard_dim = keyboard_dim
        self.frames = frames_per_chunk
        self.degrees_per_unit = degrees_per_unit
        self.min_rate = deadzone * 1.05  # just above the dead zone, also after float32 rounding
        self.look_rate = look_rate
        self.pitch_limit = pitch_limit
        self.held = np.zeros(keyboard_dim, np.int8)
        self.tapped = np.zeros(keyboard_dim, np.int8)
        self.look_held = np.zeros(2, np.int8)  # (pitch, yaw) arrow directions in {-1, 0, 1}
        self.look_tapped = np.zeros(2, np.int8)
        self.pending_deg = np.zeros(2)  # (pitch, yaw) mouse motion not yet commanded
        self.pitch = 0.0  # commanded pitch so far in this episode
        self.seq = 0  # sequence number of the latest input message

    def update(self, seq: int, keys: np.ndarray, look: np.ndarray, mouse_deg: np.ndarray) -> None:
        """One input message: held keys [K] in {0, 1}, held arrows [2] in {-1, 0, 1}, mouse motion [2] degrees."""
        self.held = np.asarray(keys, np.int8)
        self.tapped |= self.held
        self.look_held = np.asarray(look, np.int8)
        self.look_tapped = np.where(self.look_held != 0, self.look_held, self.look_tapped).astype(np.int8)
        self.pending_deg += np.asarray(mouse_deg, np.float64)
        self.seq = max(self.seq, int(seq))

    def new_episode(self) -> None:
        """A reset: the pose starts again at pitch 0; pending mouse motion is dropped, held keys kept."""
        self.pitch = 0.0
        self.pending_deg[:] = 0.0
        self.tapped = self.held.copy()
        self.look_tapped = self.look_held.copy()

    def take_action(self) -> tuple[dict[str, np.ndarray], int]:
        """The next chunk's action (keyboard [T, K] int8, mouse [T, 2] float32) and the input seq it reflects."""
        t = self.frames
        keys = (self.held | self.tapped).astype(np.int8)
        self.tapped = self.held.copy()
        look = np.where(self.look_held != 0, self.look_held, self.look_tapped)
        self.look_tapped = self.look_held.copy()
        want = self.pending_deg + look * self.look_rate * self.degrees_per_unit * t
        lo, hi = -self.pitch_limit - self.pitch, self.pitch_limit - self.pitch
        want[0] = min(max(want[0], min(lo, 0.0)), max(hi, 0.0))  # pitch beyond the limit is dropped
        mouse = np.zeros((t, 2), np.float32)
        done = np.zeros(2)
        for axis in range(2):
            rows, used = self._spread(want[axis])
            mouse[:, axis] = rows
            done[axis] = used
        self.pending_deg = want - done
        self.pitch += done[0]
        return {"keyboard": np.repeat(keys[None], t, axis=0), "mouse": mouse}, self.seq

    def _spread(self, degrees: float) -> tuple[np.ndarray, float]:
        """Per-frame mouse rows for ``degrees`` of turn and the degrees they command."""
        t, unit = self.frames, self.degrees_per_unit
        rows = np.zeros(t, np.float32)
        units = degrees / unit
        if abs(units) / t >= self.min_rate:
            rate = math.copysign(min(abs(units) / t, 1.0), units)
            rows[:] = rate
        else:
            n = int(abs(units) // self.min_rate)
            if n == 0:
                return rows, 0.0
            rows[:n] = units / n
        return rows, float(rows.astype(np.float64).sum() * unit)
