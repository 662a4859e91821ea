"""mg3 play in real Chromium (Debian's ``chromium``, driven by Playwright): keys, mouse, reset, a bad message.

Skips itself only where Chromium is absent; ``.ci/run`` installs it. Playwright never downloads a
browser here: it launches the system's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import pytest

from mg3_env.play.browser import HEADLESS_CHROMIUM_ARGS, system_chromium

CHROMIUM = system_chromium()
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM_ARGS)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

WAIT_MS = 90_000


@pytest.fixture(scope="module")
def page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Chromium is installed but Playwright is not: pip install playwright (never 'playwright install')")
    from mg3_env.play.server import PlayServer, ServerThread
    from world_model.model import load_world_model
    from world_model.runtime import RuntimeOptions

    model = load_world_model("tiny-random", RuntimeOptions(device="cpu"))
    with ServerThread(PlayServer(model, max_chunks=50)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # the page's CSP forbids eval; Playwright's wait_for_function needs it
        pg = browser.new_context(bypass_csp=True, viewport={"width": 1000, "height": 640}).new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url)
        yield pg
        browser.close()
        assert not errors, f"the page raised: {errors}"


def _stats(page) -> dict:
    return page.evaluate("mg3Play.stats()")


def _shown_chunk(page, condition: str) -> None:
    """Wait until the frame on screen belongs to a chunk whose header satisfies ``condition`` (JS, on ``h``)."""
    page.wait_for_function(
        f"(() => {{ const s = mg3Play.stats(); const h = s.chunks.find(c => c.episode === s.episode && "
        f"c.chunk === s.shownChunk); return !!h && ({condition}); }})()",
        timeout=WAIT_MS,
    )


def test_frames_arrive_and_play(page):
    page.wait_for_function("mg3Play.stats().framesShown > 5", timeout=WAIT_MS)
    s = _stats(page)
    assert s["episode"] == 0 and s["chunks"][0]["chunk"] == 0 and s["chunks"][0]["frames"] == 57
    assert s["pose"] == [0, 0, 0, 0, 0] and not s["errors"]
    assert page.locator("#video").evaluate("c => [c.width, c.height]") == [64, 64]


def test_w_moves_forward_and_the_mouse_turns_right(page):
    page.locator("#video").focus()
    page.keyboard.down("w")
    _shown_chunk(page, "h.keyboard && h.keyboard[0] === 1")
    page.keyboard.up("w")
    page.wait_for_function("mg3Play.stats().pose[0] > 10", timeout=WAIT_MS)
    x, y, _, pitch, yaw = _stats(page)["pose"]
    assert x > 10 and abs(y) < 1e-3 and pitch == 0 and yaw == 0  # forward is +x at yaw 0
    assert _stats(page)["latencies"], "no key-to-frame latency was measured"
    box = page.locator("#video").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()  # drag (or pointer lock, where granted): right is positive yaw
    for i in range(1, 11):
        page.mouse.move(cx + 15 * i, cy)
    page.mouse.up()
    _shown_chunk(page, "h.mouse && h.mouse[1] > 0.02")
    page.wait_for_function("mg3Play.stats().pose[4] > 1", timeout=WAIT_MS)
    assert _stats(page)["pose"][3] == 0  # a horizontal drag leaves the pitch alone


def test_malformed_message_gets_an_error_and_the_session_goes_on(page):
    before = len(_stats(page)["chunks"])
    page.evaluate("""mg3Play.sendRaw('{"type": "input", "seq": "one"}')""")
    page.wait_for_function("mg3Play.stats().errors.length > 0", timeout=WAIT_MS)
    assert "seq" in _stats(page)["errors"][0]["message"] or "missing" in _stats(page)["errors"][0]["message"]
    assert "error" in page.locator("#status").inner_text()
    page.wait_for_function(f"mg3Play.stats().chunks.length > {before + 1}", timeout=WAIT_MS)
    assert _stats(page)["closed"] is None


def test_reset_starts_a_new_episode_at_the_origin(page):
    page.evaluate("document.exitPointerLock()")  # what Esc does for a person
    page.locator("#seed").fill("5")
    page.click("#reset")
    page.wait_for_function("mg3Play.stats().episode === 1 && mg3Play.stats().framesShown > 0", timeout=WAIT_MS)
    _shown_chunk(page, "h.chunk === 0 && h.seed === 5")
    assert _stats(page)["pose"] == [0, 0, 0, 0, 0]
