"""The encode stage takes the recorder's shards as they land (world_model.train.pipeline._encode_split) and joins
their latents (LatentStore.concat): the same segments, with the same frames' actions and prompts, as encoding the
whole recording at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from world_model.config import tiny
from world_model.train.clips import LatentStore
from world_model.train.frames import FrameStore, synthetic_store
from world_model.train.status import StatusFile


@pytest.fixture(scope="module")
def encoder():
    from world_model.text import make_text_encoder
    from world_model.train.autoencoder import identity_stats
    from world_model.train.encode import encode_store
    from world_model.vae import WanVAE

    cfg = tiny(32, 32)
    torch.manual_seed(0)
    vae, text = WanVAE(identity_stats(cfg.vae)).eval(), make_text_encoder(cfg.text)
    return lambda store, mirror=False: encode_store(vae, store, 25, text, progress=False, mirror=mirror)


def _shards() -> list[FrameStore]:
    a = synthetic_store(2, 100, (32, 32), seed=1)
    b = synthetic_store(1, 120, (32, 32), seed=2)
    b.prompts = ["a second prompt"]
    short = synthetic_store(1, 40, (32, 32), seed=3)  # a level exit after 40 frames: no 97-frame segment
    return [a, short, b]


def _segments(store: LatentStore) -> dict[bytes, tuple]:
    """Each segment's latents -> (its first frame's actions and pose, its prompt embedding), order-free."""
    out = {}
    for i in range(store.num_segments):
        f = int(store.seg_start[i])
        key = store.latents[i].float().numpy().tobytes()
        out[key] = (
            store.mouse[f].tolist(),
            store.keyboard[f].tolist(),
            store.poses[f].tolist(),
            store.text[int(store.seg_prompt[i])].sum().item(),
        )
    return out


def test_concat_keeps_each_segment_with_its_frames_and_prompt(encoder):
    a, _, b = _shards()
    whole = encoder(FrameStore.concat([a, b]), mirror=True)
    joined = LatentStore.concat([encoder(a, mirror=True), encoder(b, mirror=True)])
    assert joined.num_segments == whole.num_segments == 2 * (2 * 1 + 1)
    assert _segments(joined) == _segments(whole)
    with pytest.raises(ValueError, match="no latent stores"):
        LatentStore.concat([])


def _recording(tmp_path, shards, *, write_later: int, gate: threading.Event):
    """A run whose recorder (a sleeping process) has written the first shards; a thread writes the rest and
    done.json once ``gate`` is set (or after 60 s: an encode that waits for the whole recording never sets it)."""
    from world_model.train.engine_frames import DONE

    run = tmp_path / "run"
    train = run / "data" / "frames" / "train"
    train.mkdir(parents=True)
    recorder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    StatusFile(run / "data", "data").update(state="growing", pid=recorder.pid)
    now, later = shards[: len(shards) - write_later], shards[len(shards) - write_later :]
    for i, s in enumerate(now):
        s.save(train / f"part-{i:04d}")

    def finish():
        gate.wait(60)
        for i, s in enumerate(later, start=len(now)):
            s.save(train / f"part-{i:04d}")
        (run / "data" / "frames" / DONE).write_text(json.dumps({"train": 1}))

    thread = threading.Thread(target=finish)
    thread.start()
    return run, recorder, thread


def test_shards_are_encoded_as_they_land(tmp_path, encoder):
    from world_model.train.pipeline import _encode_split

    shards = _shards()
    gate = threading.Event()
    run, recorder, thread = _recording(tmp_path, shards, write_later=1, gate=gate)
    reports, last_written = [], []
    last = run / "data" / "frames" / "train" / "part-0002"

    def encode(store):
        last_written.append(last.exists())
        if len(last_written) == 2:  # the recorder writes its last shard while the second is encoded (not on a timer:
            gate.set()  # a loaded 2-core machine took longer than the 2.5 s once waited for the first two)
        return encoder(store, mirror=True)

    try:
        enc = _encode_split(run, "train", encode, reports.append)
    finally:
        thread.join()
        recorder.kill()
        recorder.wait()
    # the first two shards were encoded before the last existed; the short one added nothing
    assert last_written == [False, False, True] and reports == [4, 6]
    assert _segments(enc) == _segments(encoder(FrameStore.concat(shards), mirror=True))
    assert StatusFile.existing(run / "data", "data").data["state"] == "done"


def test_a_recorder_that_dies_stops_the_encode(tmp_path, encoder):
    from world_model.train.pipeline import _encode_split

    run = tmp_path / "run"
    (run / "data" / "frames" / "train").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    StatusFile(run / "data", "data").update(state="growing", pid=dead.pid)
    synthetic_store(1, 100, (32, 32)).save(run / "data" / "frames" / "train" / "part-0000")
    with pytest.raises(RuntimeError, match="stopped early"):
        _encode_split(run, "train", encoder, lambda n: None)


def test_a_split_without_a_whole_segment_is_refused(tmp_path, encoder):
    from world_model.train.encode import NoSegmentError
    from world_model.train.engine_frames import DONE
    from world_model.train.pipeline import _encode_split

    run = tmp_path / "run"
    (run / "data" / "frames" / "train").mkdir(parents=True)
    StatusFile(run / "data", "data").update(state="growing", pid=None)
    synthetic_store(1, 40, (32, 32)).save(run / "data" / "frames" / "train" / "part-0000")
    (run / "data" / "frames" / DONE).write_text("{}")
    with pytest.raises(NoSegmentError, match="train split"):
        _encode_split(run, "train", encoder, lambda n: None)
    assert np.load(run / "data" / "frames" / "train" / "part-0000" / "starts.npy").tolist() == [0, 40]
