"""When to generate the next chunk: ahead of playback, but as late as is safe.

Chunk k + 1 is generated while chunk k plays, with the input held at the moment its generation
starts. Starting as soon as chunk k begins to play would add up to one chunk of latency between a
key press and the frames that show it; :class:`Pacer` instead starts when the frames the page
still has to play (reported when chunk k starts) cover the expected generation time with a
margin: ``start = report_time + buffered - (safety x expected_step + margin)``. The expected step
is a running average of the measured steps; until one is measured, the start is immediate.

When the generator is slower than playback (the expected step longer than a chunk's play time
``chunk_s``), waiting for chunk k to start playing would idle the generator while
chunk k is encoded, sent and decoded; then chunk k + 1 starts at once as soon as chunk k - 1 has begun
to play: generation runs back to back, at most two chunks ahead of what plays (so the page's buffer,
and with it the latency of the input, stays bounded). Pure arithmetic; the caller owns the clock.
"""

from __future__ import annotations

__all__ = ["Pacer"]


class Pacer:
    """Start times of chunk generation for one session.

    Args:
        safety: factor on the expected step time.
        margin_s: seconds added to it (jitter of a shared machine, JPEG encoding, transfer).
        smoothing: weight of the newest step in the running average.
    """

    def __init__(
        self, *, safety: float = 1.3, margin_s: float = 0.25, smoothing: float = 0.3, chunk_s: float | None = None
    ) -> None:
        self.safety = safety
        self.chunk_s = chunk_s  # play time of one chunk (frames / fps); None: never counted as behind
        self.margin_s = margin_s
        self.smoothing = smoothing
        self.expected_step_s: float | None = None
        self._played: tuple[int, float, float] | None = None  # chunk, report time, buffered seconds

    def new_episode(self) -> None:
        self._played = None

    def note_step(self, seconds: float) -> None:
        """A chunk took ``seconds`` to generate (and encode)."""
        e = self.expected_step_s
        self.expected_step_s = seconds if e is None else (1 - self.smoothing) * e + self.smoothing * seconds

    def note_played(self, chunk: int, buffered_s: float, now: float) -> None:
        """The page began playing ``chunk`` at ``now`` with ``buffered_s`` seconds of frames left to play."""
        if self._played is None or chunk >= self._played[0]:
            self._played = (chunk, now, buffered_s)

    @property
    def behind(self) -> bool:
        """Whether a generation is expected to take longer than its chunk plays."""
        e, c = self.expected_step_s, self.chunk_s
        return e is not None and c is not None and e > c

    def start_time(self, next_chunk: int, now: float) -> float | None:
        """When to start generating ``next_chunk``: a time (<= now: at once), or None: wait for a play report."""
        if next_chunk == 0:
            return now
        need = next_chunk - (2 if self.behind else 1)  # the chunk that must have begun to play
        if need >= 0 and (self._played is None or self._played[0] < need):
            return None
        if self.expected_step_s is None or self.behind:
            return now
        _, at, buffered = self._played
        return at + buffered - (self.safety * self.expected_step_s + self.margin_s)
