"""mg3 play without a browser: input -> actions, pacing, the wire format, and the server over a WebSocket."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest

from mg3_env.play.controls import Controls
from mg3_env.play.pacing import Pacer
from mg3_env.play.protocol import (
    InputMessage,
    PlayedMessage,
    ProtocolError,
    ResetMessage,
    decode_chunk,
    decode_upload,
    encode_chunk,
    parse_text,
)

NAMES = ("start", "street", "upload")


def _parse(obj):
    return parse_text(obj if isinstance(obj, str) else json.dumps(obj), 6, NAMES, 100)


# ------------------------------------------------------------------ controls


def test_tapped_key_counts_for_the_next_chunk_then_clears():
    c = Controls(6, 40)
    c.update(1, [1, 0, 0, 0, 0, 0], [0, 0], [0, 0])
    c.update(2, [0, 0, 0, 0, 0, 0], [0, 0], [0, 0])  # released before the chunk starts
    action, seq = c.take_action()
    assert seq == 2 and action["keyboard"].shape == (40, 6)
    assert (action["keyboard"][:, 0] == 1).all() and action["keyboard"][:, 1:].sum() == 0
    assert c.take_action()[0]["keyboard"].sum() == 0  # the tap is spent


def test_mouse_motion_spread_over_the_chunk_is_commanded_exactly():
    c = Controls(6, 40)
    c.update(1, [0] * 6, [0, 0], [-6.0, 30.0])  # 30 degrees right: 0.75 per frame = 0.05 units
    action, _ = c.take_action()
    np.testing.assert_allclose(action["mouse"][:, 1], 0.05, rtol=1e-6)
    np.testing.assert_allclose(action["mouse"][:, 0].sum() * 15, -6.0, rtol=1e-5)
    assert (np.abs(action["mouse"][action["mouse"] != 0]) >= 0.02).all()  # nothing lost in the dead zone
    assert np.abs(c.pending_deg).max() < 1e-4


def test_small_mouse_motion_goes_on_the_first_frames_above_the_dead_zone():
    c = Controls(6, 40)
    c.update(1, [0] * 6, [0, 0], [0.0, 3.0])  # spread evenly: 0.005 units per frame, inside the dead zone
    yaw = c.take_action()[0]["mouse"][:, 1]
    moved = yaw[yaw != 0]
    assert 0 < len(moved) < 40 and (yaw[: len(moved)] != 0).all()
    assert (moved >= 0.02).all()
    np.testing.assert_allclose(moved.sum() * 15, 3.0, rtol=1e-5)
    c.update(2, [0] * 6, [0, 0], [0.0, 0.1])  # less than one frame's worth waits
    assert c.take_action()[0]["mouse"].sum() == 0 and c.pending_deg[1] == pytest.approx(0.1)


def test_arrow_keys_turn_at_the_release_rate_and_pitch_stops_at_the_limit():
    c = Controls(6, 40, pitch_limit=45.0)
    c.update(1, [0] * 6, [0, 1], [0, 0])  # right arrow held
    np.testing.assert_allclose(c.take_action()[0]["mouse"][:, 1], 0.1, rtol=1e-6)
    c.update(2, [0] * 6, [1, 0], [0, 0])  # down arrow held: 60 degrees per chunk, limited to 45
    pitch = c.take_action()[0]["mouse"][:, 0].astype(np.float64).sum() * 15
    assert pitch == pytest.approx(45.0, abs=1e-3)
    assert c.take_action()[0]["mouse"][:, 0].sum() == 0  # held, but at the limit
    c.new_episode()
    assert c.pitch == 0.0


# ------------------------------------------------------------------ pacing


def test_pacer_generates_one_chunk_ahead_and_as_late_as_is_safe():
    p = Pacer(safety=1.5, margin_s=0.5)
    assert p.start_time(0, now=10.0) == 10.0
    assert p.start_time(1, now=10.0) is None  # chunk 0 not played yet
    p.note_played(0, buffered_s=3.5, now=11.0)
    assert p.start_time(1, now=11.0) == 11.0  # no step measured yet: at once
    p.note_step(1.0)
    assert p.start_time(1, now=11.0) == pytest.approx(11.0 + 3.5 - 2.0)
    assert p.start_time(2, now=12.0) is None  # chunk 1 has not started playing
    p.note_step(5.0)  # slower than playback: the start lies in the past
    assert p.start_time(1, now=11.0) < 11.0
    p.new_episode()
    assert p.start_time(1, now=20.0) is None


def test_pacer_runs_a_slow_generator_back_to_back_at_most_two_chunks_ahead():
    """Slower than playback: chunk k + 1 need not wait for chunk k to be encoded, sent and begin to
    play (that would idle the generator), only for chunk k - 1, which bounds the page's buffer."""
    p = Pacer(safety=1.5, margin_s=0.5, chunk_s=2.5)
    p.note_step(2.4)  # keeps ahead (if only just): the one-chunk rule
    assert not p.behind and p.start_time(1, now=10.0) is None
    p.note_step(3.0)  # now 2.58 s expected per 2.5 s chunk
    assert p.behind
    assert p.start_time(1, now=10.0) == 10.0  # right after the reset's chunk, before it plays
    assert p.start_time(2, now=10.0) is None  # chunk 0 has not begun to play
    p.note_played(0, buffered_s=0.0, now=11.0)
    assert p.start_time(2, now=11.5) == 11.5
    assert p.start_time(3, now=11.5) is None
    assert Pacer(chunk_s=None).behind is False  # without a chunk time never counted as behind


# ------------------------------------------------------------------ protocol


def test_valid_messages_parse():
    m = _parse({"type": "input", "seq": 3, "keys": [1, 0, 0, 1, 0, 0], "look": [0, -1], "mouse": [1.5, -2]})
    assert isinstance(m, InputMessage) and m.seq == 3 and m.keys.tolist() == [1, 0, 0, 1, 0, 0]
    assert _parse({"type": "played", "episode": 0, "chunk": 2, "buffered_ms": 1500}) == PlayedMessage(0, 2, 1.5)
    assert _parse({"type": "reset"}) == ResetMessage(None, None, None)
    assert _parse({"type": "reset", "image": "street", "prompt": "a room", "seed": 7}) == ResetMessage(
        "street", "a room", 7
    )


@pytest.mark.parametrize(
    "message, words",
    [
        ("{not json", "JSON"),
        ("[1, 2]", "JSON object"),
        ({"kind": "input"}, "'type'"),
        ({"type": "jump"}, "unknown message type"),
        ({"type": "input", "seq": 1, "keys": [1, 0, 0, 0, 0], "look": [0, 0], "mouse": [0, 0]}, "list of 6"),
        ({"type": "input", "seq": 1, "keys": [2, 0, 0, 0, 0, 0], "look": [0, 0], "mouse": [0, 0]}, "[0, 1]"),
        ({"type": "input", "seq": 1, "keys": [True, 0, 0, 0, 0, 0], "look": [0, 0], "mouse": [0, 0]}, "integer"),
        ({"type": "input", "seq": -1, "keys": [0] * 6, "look": [0, 0], "mouse": [0, 0]}, "seq"),
        ({"type": "input", "seq": 1, "keys": [0] * 6, "look": [0, 2], "mouse": [0, 0]}, "look"),
        ({"type": "input", "seq": 1, "keys": [0] * 6, "look": [0, 0], "mouse": [0, 1e9]}, "360"),
        ('{"type": "input", "seq": 1, "keys": [0,0,0,0,0,0], "look": [0,0], "mouse": [0, NaN]}', "finite"),
        ({"type": "input", "seq": 1, "keys": [0] * 6, "look": [0, 0]}, "missing fields ['mouse']"),
        ({"type": "input", "seq": 1, "keys": [0] * 6, "look": [0, 0], "mouse": [0, 0], "x": 1}, "unknown fields ['x']"),
        ({"type": "played", "episode": 0, "chunk": 1, "buffered_ms": -5}, ">= 0"),
        ({"type": "reset", "image": "/etc/passwd"}, "image must be one of"),
        ({"type": "reset", "prompt": ""}, "non-empty"),
        ({"type": "reset", "prompt": "x" * 101}, "at most 100"),
        ({"type": "reset", "seed": 2**40}, "seed"),
        ("x" * 20000, "at most"),
    ],
)
def test_bad_messages_are_refused_with_a_sentence(message, words):
    with pytest.raises(ProtocolError, match=None) as e:
        _parse(message)
    assert words in str(e.value)


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_checked_before_decoding():
    assert decode_upload(_png(20, 10), 10_000).shape == (10, 20, 3)
    with pytest.raises(ProtocolError, match="at most 100 are accepted"):
        decode_upload(_png(20, 10), 100)
    with pytest.raises(ProtocolError, match="could not decode"):
        decode_upload(b"\x89PNG\r\n\x1a\n" + b"\0" * 50, 10_000)
    with pytest.raises(ProtocolError, match="pixels"):
        decode_upload(_png(300, 300), 10**6, max_pixels=300 * 299)
    with pytest.raises(ProtocolError, match="empty"):
        decode_upload(b"", 100)


def test_chunk_round_trip_one_jpeg_per_chunk():
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)  # 32x32 blocks
    message = encode_chunk({"episode": 1, "chunk": 2}, frames, quality=95)
    header, back = decode_chunk(message)
    assert header["episode"] == 1 and header["chunk"] == 2 and header["grid"] == [5, 1]
    assert back.shape == frames.shape
    err = np.abs(back[:, None].astype(int) - frames[None]).mean(axis=(2, 3, 4))  # [decoded, original]
    assert (err.argmin(axis=1) == np.arange(5)).all() and err.diagonal().max() < 12  # each frame in its place
    assert message.count(b"\xff\xd8\xff") == 1  # one JPEG
    # taller than a JPEG may be: frames go into columns
    tall = np.zeros((3, 30000, 2, 3), np.uint8)
    header, back = decode_chunk(encode_chunk({}, tall))
    assert header["grid"] == [2, 2] and back.shape == tall.shape


# ------------------------------------------------------------------ server over a WebSocket

websockets = pytest.importorskip("websockets", reason="the play extra is not installed: pip install 'mg3[play]'")


@pytest.fixture(scope="module")
def model():
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    return load_world_model("tiny-random", RuntimeOptions(device="cpu"))


def _serve(model, **kw):
    from mg3_env.play.server import PlayServer, ServerThread

    return ServerThread(PlayServer(model, **kw))


async def _next(ws, want: str, timeout: float = 60.0):
    """The next message of type ``want`` (chunks are decoded); others are skipped."""
    while True:
        m = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(m, bytes):
            header, frames = decode_chunk(m)
            if want == "chunk":
                return header, frames
        else:
            obj = json.loads(m)
            if obj["type"] == want:
                return obj


async def _hold(ws, seq: int, keys: list[int]) -> dict:
    """Send input ``seq`` (``keys`` held), acknowledge every chunk played, and return the header of
    the first chunk generated with that input."""
    await ws.send(json.dumps({"type": "input", "seq": seq, "keys": keys, "look": [0, 0], "mouse": [0, 0]}))
    await ws.send(json.dumps({"type": "played", "episode": 0, "chunk": 0, "buffered_ms": 0}))
    while True:
        header, _ = await _next(ws, "chunk")
        await ws.send(json.dumps({"type": "played", "episode": 0, "chunk": header["chunk"], "buffered_ms": 0}))
        if header["input_seq"] >= seq:
            return header


def test_server_session_busy_errors_upload_and_reset(model):
    from websockets.asyncio.client import connect

    async def play(url):
        ws_url = url.replace("http://", "ws://") + "ws"
        async with connect(ws_url) as ws:
            hello = await _next(ws, "hello")
            assert hello["fps"] == model.config.stream.fps and hello["keys"][0] == "forward"
            header, frames = await _next(ws, "chunk")
            assert (header["episode"], header["chunk"]) == (0, 0) and frames.shape == (57, 64, 64, 3)
            # a second player is told the server is busy
            async with connect(ws_url) as other:
                busy = json.loads(await other.recv())
                assert busy["type"] == "busy" and "try again" in busy["message"]
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await other.recv()
                assert closed.value.rcvd.code == 1013
            # malformed messages get errors; the session goes on
            for bad in ("{oops", json.dumps({"type": "input", "seq": 1}), json.dumps({"type": "reset", "seed": -1})):
                await ws.send(bad)
                assert (await _next(ws, "error"))["message"]
            await ws.send(b"not an image")
            assert "could not decode" in (await _next(ws, "error"))["message"]
            await ws.send(json.dumps({"type": "reset", "image": "upload"}))
            assert "no image has been uploaded" in (await _next(ws, "error"))["message"]
            # W held: the pose moves along +x (yaw 0)
            header = await _hold(ws, 5, [1, 0, 0, 0, 0, 0])
            poses = np.array(header["poses"])
            assert header["keyboard"][0] == 1 and poses[-1, 0] > poses[0, 0] and np.abs(poses[:, 1]).max() < 1e-3
            # upload an image and reset from it with a prompt and seed
            await ws.send(_png(96, 48))
            assert (await _next(ws, "uploaded"))["width"] == 96
            await ws.send(json.dumps({"type": "reset", "image": "upload", "prompt": "a green field", "seed": 11}))
            assert (await _next(ws, "status"))["episode"] == 1
            header, _ = await _next(ws, "chunk")
            while header["episode"] != 1:
                header, _ = await _next(ws, "chunk")
            assert header["chunk"] == 0 and header["seed"] == 11 and header["prompt"] == "a green field"
            assert header["poses"][0] == [0, 0, 0, 0, 0]

    with _serve(model, max_chunks=8) as url:
        asyncio.run(play(url))


def test_server_pages_and_origin_check(model):
    import urllib.error
    import urllib.request

    from websockets.asyncio.client import connect

    with _serve(model) as url:
        page = urllib.request.urlopen(url).read().decode()
        assert "/play.js" in page
        assert b"WebSocket" in urllib.request.urlopen(url + "play.js").read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "../etc/passwd")
        assert e.value.code == 404
        e.value.close()  # an open response would hold the server's shutdown

        async def foreign():
            with pytest.raises(websockets.InvalidStatus) as e:
                async with connect(url.replace("http://", "ws://") + "ws", origin="http://evil.example"):
                    pass
            assert e.value.response.status_code == 403

        asyncio.run(foreign())


def test_recording_writes_the_played_actions(model, tmp_path):
    from websockets.asyncio.client import connect

    from world_model.data.format import DatasetReader

    async def play(url):
        async with connect(url.replace("http://", "ws://") + "ws") as ws:
            await _next(ws, "chunk")
            return (await _hold(ws, 1, [0, 0, 0, 1, 0, 0]))["chunk"]

    thread = _serve(model, record=tmp_path / "ds", max_chunks=8)
    with thread as url:
        last = asyncio.run(play(url))
        deadline = time.monotonic() + 30
        while thread.server.sessions and time.monotonic() < deadline:  # the session publishes its episode
            time.sleep(0.05)
    reader = DatasetReader(tmp_path / "ds")
    assert len(reader) == 1
    ep = reader.load_episode(0, frames=False)
    assert len(ep) >= 57 + 40 * last
    assert ep.keyboard[:57].sum() == 0 and (ep.keyboard[57 + 40 * (last - 1) :, 3] == 1).all()
    assert ep.poses[-1, 1] > 0  # D moves right (+y)


def test_play_cli_refuses_bad_options(capsys):
    from mg3_env.cli import main

    assert main(["play", "--model", "tiny-random", "--record", "x", "--max-sessions", "2"]) == 2
    assert "one session at a time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["play", "--port", "70000"])
    with pytest.raises(SystemExit):
        main(["play", "--steps", "0"])
    # runtime options: checked before anything is served, with what to do instead
    assert main(["play", "--model", "tiny-random", "--device", "cpu", "--quantize", "fp8"]) == 2
    assert "use quantize=None" in capsys.readouterr().err
    assert main(["play", "--model", "tiny-random", "--device", "cpu", "--attention", "fast"]) == 2
    assert "attention must be one of" in capsys.readouterr().err


def test_play_cli_passes_runtime_options_to_the_loader(monkeypatch):
    """mg3 play --compile / --quantize / --attention / --context-cache reach RuntimeOptions of the loaded model."""
    import torch

    import world_model.model
    from mg3_env.cli import main
    from world_model.runtime import RuntimeOptions

    seen = []

    def fake_load(name, runtime):
        seen.append(runtime)
        raise ValueError("stop here")

    monkeypatch.setattr(world_model.model, "load_world_model", fake_load)
    monkeypatch.delenv("MG3_CPU_QUANTIZE")  # the suite's "none" (conftest): a user's default
    assert main(["play", "--model", "tiny-random", "--device", "cpu", "--compile", "--attention", "math"]) == 2
    assert seen[0].compile and seen[0].attention == "math" and seen[0].quantize == "auto"  # the CPU's default
    assert main(["play", "--model", "tiny-random", "--device", "cuda", "--quantize", "fp8"]) == 2
    assert seen[1].quantize == "fp8" and seen[1].dtype == torch.bfloat16 and not seen[1].compile
    assert main(["play", "--model", "default", "--device", "cpu", "--quantize", "int8"]) == 2
    assert seen[2].quantize == "int8" and seen[2].dtype == RuntimeOptions.for_device("cpu").dtype
    assert main(["play", "--model", "default", "--device", "cpu", "--quantize", "none"]) == 2
    assert seen[3].quantize is None and seen[3].context_cache == "auto"  # the model's (resolved at load)
    assert main(["play", "--model", "default", "--device", "cpu", "--context-cache", "on"]) == 2
    assert seen[4].context_cache is True


def test_a_model_with_another_sampler_shares_its_weights():
    """WorldModel.with_sampler (mg3 play --steps, mg3 eval --action-guidance): the same weights, another
    sampler config; a bad value raises the config's error and leaves the model as it was."""
    from world_model.config import ConfigError
    from world_model.model import load_world_model

    wm = load_world_model("tiny-random")
    fast = wm.with_sampler(num_steps=2)
    assert fast.config.sampler.num_steps == 2 and wm.config.sampler.num_steps != 2
    assert fast.dit is wm.dit and fast.vae is wm.vae
    with pytest.raises(ConfigError):
        wm.with_sampler(num_steps=0)
    assert wm.config.sampler.num_steps != 0


def test_compute_thread_runs_calls_on_one_thread_and_passes_errors_back():
    import threading

    from mg3_env.play.compute import ComputeThread

    compute = ComputeThread()
    try:
        assert compute.ident is not None and compute.ident != threading.get_ident()
        assert compute.call(threading.get_ident) == compute.ident
        assert compute.call(lambda: compute.call(threading.get_ident)) == compute.ident  # nested: no deadlock
        assert asyncio.run(compute.run(threading.get_ident)) == compute.ident
        with pytest.raises(ZeroDivisionError):
            compute.call(lambda: 1 / 0)
        assert compute.call(lambda x, y=0: x + y, 2, y=3) == 5  # still serving after an error
    finally:
        compute.close()


def test_every_env_call_of_a_session_runs_on_the_servers_compute_thread(model, monkeypatch):
    """Torch work on two threads makes libgomp throttle its workers (a CPU chunk 1.5-2x slower):
    making, resetting, stepping and closing the env all happen on the one compute thread."""
    import threading

    from websockets.asyncio.client import connect

    from mg3_env.env import MatrixGameEnv
    from mg3_env.play.server import PlayServer, ServerThread

    seen: dict[str, list[int]] = {}
    for name in ("__init__", "reset", "step", "close"):
        original = getattr(MatrixGameEnv, name)

        def wrapped(self, *a, _name=name, _original=original, **k):
            seen.setdefault(_name, []).append(threading.get_ident())
            return _original(self, *a, **k)

        monkeypatch.setattr(MatrixGameEnv, name, wrapped)

    async def play(url):
        async with connect(url.replace("http://", "ws://") + "ws") as ws:
            await _next(ws, "chunk")
            await _hold(ws, 1, [1, 0, 0, 0, 0, 0])

    server = PlayServer(model, max_chunks=8)
    ident = server.compute.ident
    with ServerThread(server) as url:  # its end waits for the session and the compute thread to finish
        asyncio.run(play(url))
    assert len(seen["__init__"]) == len(seen["close"]) == 2  # the server's check at start, the session's env
    assert len(seen["reset"]) >= 1 and len(seen["step"]) >= 1
    assert {i for ids in seen.values() for i in ids} == {ident}, (seen, ident)


def test_a_chunk_is_encoded_while_the_next_one_is_generated(model, monkeypatch):
    """The generator hands each chunk's frames to the encoder thread and goes on (when it is behind
    playback it need not wait for the chunk to play): the JPEG of chunk k is made while chunk k + 1
    is generated, and the page still gets every chunk, in order."""
    from websockets.asyncio.client import connect

    from mg3_env.play.pacing import Pacer
    from mg3_env.play.session import Session

    events: list[tuple[str, int, float]] = []
    encode, step = Session._encode, Session._step

    def slow_encode(self, header, frames):
        events.append(("encode", header["chunk"], time.monotonic()))
        time.sleep(0.5)
        out = encode(self, header, frames)
        events.append(("encoded", header["chunk"], time.monotonic()))
        return out

    def timed_step(self, action, seq, episode, chunk):
        events.append(("step", chunk, time.monotonic()))
        return step(self, action, seq, episode, chunk)

    monkeypatch.setattr(Session, "_encode", slow_encode)
    monkeypatch.setattr(Session, "_step", timed_step)
    monkeypatch.setattr(Pacer, "behind", property(lambda self: True))

    async def play(url):
        async with connect(url.replace("http://", "ws://") + "ws") as ws:
            chunks = []
            while len(chunks) < 4:
                header, frames = await _next(ws, "chunk")
                chunks.append(header["chunk"])
                await ws.send(json.dumps({"type": "played", "episode": 0, "chunk": header["chunk"], "buffered_ms": 0}))
            return chunks

    with _serve(model, max_chunks=8) as url:
        assert asyncio.run(play(url)) == [0, 1, 2, 3]
    at = {(kind, chunk): t for kind, chunk, t in events}
    assert at[("step", 2)] < at[("encoded", 1)]  # chunk 2 was being generated while chunk 1 was encoded


def test_headless_page_plays_reports_and_measures(model):
    """The browserless player (GPU benchmark) plays chunks at the model's rate, paces the server with
    its reports and measures latency: holding W moves the pose along +x."""
    from mg3_env.play.client import HeadlessPage, InputPhase

    with _serve(model, max_chunks=50) as url:
        page = HeadlessPage(url, script=(InputPhase(keys=(0,)),), phase_s=10.0)
        start, end, wall = asyncio.run(page.play(6.0))
    assert start["framesShown"] >= 1 and end["framesShown"] > start["framesShown"]
    assert wall == pytest.approx(6.0, abs=1.0)
    assert end["fps"] == model.config.stream.fps and end["errors"] == []
    chunks = [c["chunk"] for c in end["chunks"]]
    assert chunks[0] == 0 and chunks == sorted(chunks) and len(chunks) >= 2
    assert all(c["decodeMs"] >= 0 and c["frames"] > 0 for c in end["chunks"])
    assert end["latencies"] and all(x["ms"] > 0 for x in end["latencies"])
    assert end["pose"][0] > 0  # W held: moved forward along +x


def test_a_reset_the_env_refuses_keeps_the_sessions_image_and_prompt(model, monkeypatch):
    from websockets.asyncio.client import connect

    from mg3_env.env import MatrixGameEnv

    reset = MatrixGameEnv.reset

    def refusing(self, *, seed=None, options=None):
        if (options or {}).get("prompt") == "refuse me":
            raise ValueError("refused")
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(MatrixGameEnv, "reset", refusing)

    async def play(url):
        async with connect(url.replace("http://", "ws://") + "ws") as ws:
            await _next(ws, "chunk")
            await ws.send(json.dumps({"type": "reset", "prompt": "a green field", "seed": 3}))
            header, _ = await _next(ws, "chunk")
            while header["prompt"] != "a green field":
                header, _ = await _next(ws, "chunk")
            await ws.send(json.dumps({"type": "reset", "prompt": "refuse me"}))
            assert "reset failed: refused" in (await _next(ws, "error"))["message"]
            await ws.send(json.dumps({"type": "reset", "seed": 4}))  # a plain reset: the prompt kept from before
            header, _ = await _next(ws, "chunk")
            while header.get("seed") != 4:
                header, _ = await _next(ws, "chunk")
            assert header["prompt"] == "a green field"  # was "refuse me" again, refused again

    with _serve(model, max_chunks=8) as url:
        asyncio.run(play(url))
