"""mg3 play, measured: one minute of scripted play against ``mg3 play``, as a person's page sees it.

Starts ``mg3 play`` (a subprocess, the command a person runs), opens the page in Debian's Chromium
(Playwright, never a downloaded browser), and after the first chunk plays, presses keys and moves
the mouse for ``--seconds`` (a new input every 2.5 s: W, W + mouse, A, D, arrows, S, none ...).
The page's own measurements are read back: generated frames/s per chunk (frames over the slower of
the step and its JPEG encoding, which overlaps the next step), key-to-frame latency (key event ->
first shown frame of the first chunk generated with it), playback stalls (the page had no frame when
one was due) and the rate it played at. Where there is no browser (the GPU machine), ``--client
python`` plays the same script through :class:`mg3_env.play.client.HeadlessPage`, which follows the
page's playback, reports and measurements over the same WebSocket.

    python bench/play.py --model default --seconds 60 --out bench/results/play_cpu.json
    python bench/play.py --model mg3-5b-random --device cuda --client python --out bench/results/play_5b_h200.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time

from mg3_env.play.browser import HEADLESS_CHROMIUM_ARGS, system_chromium

# (keys held, arrow held, mouse drag in pixels per step) for each 2.5 s phase
SCRIPT = [
    ("w", None, 0),
    ("w", None, 12),
    (None, None, 0),
    ("a", None, 0),
    ("d", "ArrowLeft", 0),
    ("w", None, -12),
    ("s", None, 0),
    (None, "ArrowRight", 0),
]


def _pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def _play_in_chromium(url: str, chromium: str, args) -> tuple[dict, dict, float]:
    """The page in headless Chromium, driven by keyboard and mouse events; its own measurements."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=list(HEADLESS_CHROMIUM_ARGS))
        page = browser.new_context(bypass_csp=True, viewport={"width": 900, "height": 560}).new_page()
        page.goto(url)
        page.wait_for_function("mg3Play.stats().framesShown > 0", timeout=300_000)
        start_stats = page.evaluate("mg3Play.stats()")
        box = page.locator("#video").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()  # pointer lock (or drag): mouse motion turns the camera
        t0 = time.monotonic()
        held: list[str] = []
        phase = 0
        while time.monotonic() - t0 < args.seconds:
            key, arrow, drag = SCRIPT[phase % len(SCRIPT)]
            for k in held:
                page.keyboard.up(k)
            held = [k for k in (key, arrow) if k]
            for k in held:
                page.keyboard.down(k)
            end = t0 + (phase + 1) * args.phase
            x = cx
            while time.monotonic() < min(end, t0 + args.seconds):
                if drag:
                    x += drag
                    page.mouse.move(x, cy)
                    x = cx if abs(x - cx) > 200 else x
                time.sleep(0.05)
            phase += 1
        for k in held:
            page.keyboard.up(k)
        page.mouse.up()
        wall = time.monotonic() - t0
        s = page.evaluate("mg3Play.stats()")
        if args.screenshot:
            page.evaluate("document.exitPointerLock()")
            page.screenshot(path=args.screenshot)
        browser.close()
    return start_stats, s, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--phase", type=float, default=2.5, help="seconds between input changes")
    p.add_argument("--out", default="bench/results/play_cpu.json")
    p.add_argument("--device", default="cpu", help="mg3 play --device (cpu, cuda ...)")
    p.add_argument(
        "--client",
        choices=("chromium", "python"),
        default="chromium",
        help="the page in headless Chromium (default), or mg3_env.play.client.HeadlessPage where there is no browser",
    )
    p.add_argument("--screenshot", default=None, help="save a screenshot of the page at the end (PNG)")
    p.add_argument("--steps", type=int, default=None, help="mg3 play --steps (default: the model's)")
    p.add_argument("--compile", action="store_true", help="mg3 play --compile (the cold compile precedes the minute)")
    args = p.parse_args()
    chromium = system_chromium() if args.client == "chromium" else None
    if args.client == "chromium" and chromium is None:
        sys.exit("needs Debian's chromium (apt-get install chromium), or --client python")
    server = subprocess.Popen(
        [sys.executable, "-m", "mg3_env.cli", "play", "--model", args.model, "--port", "0", "--device", args.device]
        + ([] if args.steps is None else ["--steps", str(args.steps)])
        + (["--compile"] if args.compile else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = None
    try:
        for line in server.stdout:
            m = re.search(r"(http://\S+/)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            sys.exit("mg3 play did not print its URL")
        # keep reading the server's output, so that a full pipe never blocks it
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        load0 = os.getloadavg()
        if args.client == "python":
            from mg3_env.play.client import HeadlessPage

            start_stats, s, wall = asyncio.run(HeadlessPage(url, phase_s=args.phase).play(args.seconds))
        else:
            start_stats, s, wall = _play_in_chromium(url, chromium, args)
        load1 = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=60)

    chunks = [c for c in s["chunks"] if c["chunk"] > 0]
    gen = [c["frames"] / (max(c["step_ms"], c["encode_ms"]) / 1000) for c in chunks]  # encoding overlaps the next step
    lat = [x["ms"] / 1000 for x in s["latencies"]]
    stalls = [x / 1000 for x in s["stalls"]]
    played_frames = s["framesShown"] - start_stats["framesShown"]
    result = {
        "model": args.model,
        "device": args.device,
        "steps": args.steps,
        "compile": args.compile,
        "client": args.client,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load0,
            "loadavg_after": load1,
        },
        "seconds": round(wall, 1),
        "chunks_generated": len(chunks),
        "frames_per_chunk": chunks[0]["frames"] if chunks else None,
        "model_fps": s["fps"],
        "generated_fps": {"mean": statistics.mean(gen), "min": min(gen), "max": max(gen)} if gen else None,
        "step_ms_mean": statistics.mean(c["step_ms"] for c in chunks) if chunks else None,
        "encode_ms_mean": statistics.mean(c["encode_ms"] for c in chunks) if chunks else None,
        "decode_ms_mean": statistics.mean(c["decodeMs"] for c in chunks) if chunks else None,
        "key_to_frame_s": {
            "n": len(lat),
            "mean": statistics.mean(lat) if lat else None,
            "p50": _pct(lat, 0.5),
            "p90": _pct(lat, 0.9),
            "max": max(lat) if lat else None,
        },
        "stalls": {"count": len(stalls), "total_s": sum(stalls), "longest_s": max(stalls) if stalls else 0.0},
        "shown_fps": played_frames / wall,
        "playback_rate_fps": s["rate"],
        "errors": s["errors"],
    }
    rows = [
        ("generated frames/s (mean, min-max)", _fmt3(result["generated_fps"])),
        ("model frame rate", f"{s['fps']:g}"),
        (
            "step / JPEG encode / browser decode ms",
            f"{result['step_ms_mean']:.0f} / {result['encode_ms_mean']:.1f} / {result['decode_ms_mean']:.1f}",
        ),
        (
            "key-to-frame s (mean, p50, p90, max; n)",
            f"{_f(result['key_to_frame_s']['mean'])}, {_f(_pct(lat, 0.5))}, "
            f"{_f(_pct(lat, 0.9))}, {_f(result['key_to_frame_s']['max'])}; {len(lat)}",
        ),
        (
            "stalls over the run (count, total s, longest s)",
            f"{len(stalls)}, {sum(stalls):.2f}, {result['stalls']['longest_s']:.2f}",
        ),
        ("frames shown per second", f"{result['shown_fps']:.1f}"),
        ("load average before / after", f"{load0[0]:.2f} / {load1[0]:.2f}"),
    ]
    print(
        f"mg3 play, model {args.model} on {args.device}, {wall:.0f} s of scripted play ({args.client}), "
        f"{os.cpu_count()} CPUs"
    )
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"| {name:<{w}} | {value} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


def _f(x):
    return "-" if x is None else f"{x:.2f}"


def _fmt3(d):
    return "-" if d is None else f"{d['mean']:.1f} ({d['min']:.1f}-{d['max']:.1f})"


if __name__ == "__main__":
    sys.exit(main())
