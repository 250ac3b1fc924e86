"""End to end: `speechkit serve` and its browser demo page in headless Chromium (Selenium, the
Debian ``chromium`` and ``chromium-driver`` packages). Chromium's fake microphone plays a wav
of one synthetic test-set utterance; the page resamples it to 16 kHz in its AudioWorklet, streams
it over the WebSocket, and must end with the text the Python runtime gets from the same wav
(WER within +0.2), live partials on the way and a latency figure.

The plain functions here (``browser_problem``, ``synth_test_utterances``, ``padded_wav``,
``served``, ``chromium``, ``run_page``) are also used by ``tools/screenshot_serve.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechkit.bench.serve_load import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "asr-stream-synth"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RATE = 16000
LEAD_S, TAIL_S = 0.5, 2.5  # silence around the speech: Chromium loops the fake capture file


def browser_problem() -> str | None:
    """Why the browser test cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return (f"{' and '.join(missing)} not found: the browser test needs the system Chromium and its driver; "
                "run `apt-get install chromium chromium-driver` (tools/test.sh does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the Python package selenium is missing: pip install -e '.[test]' (tools/test.sh does)"
    return None


@dataclass
class Utt:
    utt_id: str
    wav: Path
    text: str  # the reference transcript
    seconds: float
    runtime_text: str  # what the Python runtime makes of the bare utterance
    runtime_wer: float


def wer(ref: str, hyp: str) -> float:
    import jiwer

    return float(jiwer.wer(ref, hyp)) if hyp.strip() else 1.0


def synth_test_utterances(out: Path, rec, seed: int = 3, hours: float = 0.01, min_s: float = 3.0,
                          max_s: float = 6.5) -> list[Utt]:
    """Build the small synthetic corpus (``speechkit corpus synth``) into ``out``; return its test
    utterances of ``min_s``..``max_s`` seconds, best recognised by ``rec`` first, then longest."""
    from speechkit.cli import main

    if not (out / "test" / "text").is_file():
        assert main(["corpus", "synth", "--out", str(out), "--hours", str(hours), "--seed", str(seed), "--nj", "2"]) == 0
    texts = dict(line.split(" ", 1) for line in (out / "test" / "text").read_text().splitlines())
    wavs = dict(line.split(" ", 1) for line in (out / "test" / "wav.scp").read_text().splitlines())
    utts = []
    for utt_id, path in sorted(wavs.items()):
        x, sr = sf.read(path.strip(), dtype="float32")
        if sr != RATE or not min_s <= len(x) / sr <= max_s:
            continue
        hyp = rec.transcribe(x)
        utts.append(Utt(utt_id, Path(path.strip()), texts[utt_id], len(x) / sr, hyp, wer(texts[utt_id], hyp)))
    assert utts, f"no test utterance of {min_s}-{max_s} s in {out}"
    return sorted(utts, key=lambda u: (u.runtime_wer, -u.seconds))


def padded_wav(utts: list[Utt], out: Path, gap_s: float = 1.2) -> np.ndarray:
    """A 16 kHz 16-bit wav: LEAD_S silence, the utterances ``gap_s`` apart, TAIL_S silence;
    returns its samples (as float32, exactly what the file holds)."""
    parts = [np.zeros(int(LEAD_S * RATE), np.float32)]
    for i, u in enumerate(utts):
        if i:
            parts.append(np.zeros(int(gap_s * RATE), np.float32))
        parts.append(sf.read(u.wav, dtype="float32")[0])
    parts.append(np.zeros(int(TAIL_S * RATE), np.float32))
    sf.write(out, np.concatenate(parts), RATE, subtype="PCM_16")
    return sf.read(out, dtype="float32")[0]


@contextlib.contextmanager
def served(model: Path = MODEL, log: Path | None = None, timeout: float = 30.0):
    """Run ``speechkit serve MODEL`` on a free port in a subprocess; yield the port once /health
    answers; stop it (SIGTERM, then kill) afterwards."""
    port = free_port()
    model = Path(model).resolve()
    model = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model  # as a user would name it
    log_file = open(log, "w+b") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "speechkit.cli", "serve", str(model), "--port", str(port)],
                            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"speechkit serve exited with {proc.returncode}" + (f"; log: {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if json.load(r).get("status") == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"speechkit serve did not answer /health within {timeout:g} s")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            log_file.close()


@contextlib.contextmanager
def chromium(fake_audio: Path, size: tuple[int, int] = (1100, 800)):
    """Headless Chromium whose microphone plays ``fake_audio`` (looped), permission granted."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={fake_audio}",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:  # the viewport itself at `size` (the window size includes the browser's own frame)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


@dataclass
class PageRun:
    state: str
    final_text: str
    partials: list[str]  # every distinct partial text seen while polling
    latency: str
    latency_median_ms: float
    status: str
    console: list[str]

    def describe(self) -> str:
        return (f"state={self.state!r} status={self.status!r} final={self.final_text!r} latency={self.latency!r} "
                f"partials={self.partials[-3:]!r} console={self.console[-5:]!r}")


def run_page(driver, port: int, seconds: float, timeout: float = 60.0, on_poll=None) -> PageRun:
    """Open the demo page with ``?seconds=``, click Start, poll until the state is done or
    error (or ``timeout``). ``on_poll(driver, state)`` is called at every poll."""
    from selenium.webdriver.common.by import By

    driver.get(f"http://127.0.0.1:{port}/?seconds={seconds:.3f}")
    driver.find_element(By.ID, "start").click()
    partials: list[str] = []
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body.dataset.state")
        partial = driver.find_element(By.ID, "partial-text").text
        if partial and (not partials or partials[-1] != partial):
            partials.append(partial)
        if on_poll:
            on_poll(driver, state)
        if state in ("done", "error"):
            break
        time.sleep(0.05)
    lat = driver.find_element(By.ID, "latency")
    median = lat.get_attribute("data-median-ms")
    console = [e.get("message", "") for e in driver.get_log("browser")]
    return PageRun(state, driver.find_element(By.ID, "final-text").text.strip(), partials, lat.text.strip(),
                   float(median) if median else math.nan, driver.find_element(By.ID, "status-text").text, console)


# --- the test ---------------------------------------------------------------------------------

def test_browser_page_transcribes_the_fake_microphone_like_the_runtime(tmp_path):
    import pytest

    problem = browser_problem()
    if problem:
        pytest.fail(problem)
    from speechkit.runtime import OnlineRecognizer

    rec = OnlineRecognizer(MODEL)
    utt = synth_test_utterances(tmp_path / "corpus", rec)[0]
    wav = tmp_path / "mic.wav"
    samples = padded_wav([utt], wav)
    runtime_text = rec.transcribe(samples)  # the same wav the fake microphone plays
    runtime_wer = wer(utt.text, runtime_text)

    with served(log=tmp_path / "serve.log") as port, chromium(wav) as driver:
        run = run_page(driver, port, seconds=len(samples) / RATE, timeout=60)

    page_wer = wer(utt.text, run.final_text)
    report = (f"{utt.utt_id}: ref={utt.text!r}\n runtime={runtime_text!r} (WER {runtime_wer:.3f})\n"
              f" page={run.final_text!r} (WER {page_wer:.3f})\n {run.describe()}")
    print(report)
    assert run.state == "done", f"the page did not finish: {run.describe()}; server log:\n" \
                                f"{(tmp_path / 'serve.log').read_text()[-2000:]}"
    assert run.final_text, f"the page got no text: {report}"
    assert page_wer <= runtime_wer + 0.2, f"the page's text is worse than the runtime's on the same wav: {report}"
    assert len(run.partials) >= 2, f"no live partial results seen while streaming: {run.partials!r}"
    assert re.fullmatch(r"\d+ ms · \d+ ms", run.latency), f"latency element: {run.latency!r}"
    assert 0 <= run.latency_median_ms < 10_000, run.latency_median_ms


def test_browser_page_converts_the_fake_microphone_into_an_uploaded_voice(tmp_path):
    """VC mode of the same page, served by `speechkit serve VC_MODEL` (a tiny random MeanVC, see
    tests/test_serve_vc.py): the reference is uploaded through the file input (a 24 kHz file the
    page decodes and resamples), the fake microphone streams, and converted frames come back and
    are scheduled for playback as they arrive; their total is the audio sent, to a content frame."""
    import pytest
    import soxr
    from selenium.webdriver.common.by import By

    from test_serve_vc import export_tiny_vc, speech

    problem = browser_problem()
    if problem:
        pytest.fail(problem)
    for d in ("exp", "spk"):
        (tmp_path / d).mkdir()
    vc_dir = export_tiny_vc(tmp_path)
    src = tmp_path / "source.wav"
    sf.write(src, speech("us", "she walked to the station before the rain started"), RATE, subtype="PCM_16")
    wav = tmp_path / "mic.wav"
    samples = padded_wav([Utt("source", src, "", 0.0, "", 0.0)], wav)
    seconds = len(samples) / RATE
    ref = tmp_path / "reference.wav"
    sf.write(ref, soxr.resample(speech("gb", "a quiet voice reads the morning news"), RATE, 24000), 24000, subtype="PCM_16")

    with served(vc_dir, log=tmp_path / "serve.log") as port, chromium(wav) as driver:
        driver.get(f"http://127.0.0.1:{port}/?seconds={seconds:.3f}")
        deadline = time.monotonic() + 10  # /health read: a VC-only server opens the page in VC mode
        while driver.execute_script("return document.body.dataset.mode") != "vc" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.find_element(By.ID, "mode-asr").get_attribute("disabled") is not None
        assert driver.find_element(By.ID, "vc-reference").get_attribute("value") == "upload"
        driver.find_element(By.ID, "vc-file").send_keys(str(ref))
        driver.find_element(By.ID, "start").click()
        frames_while_streaming, state = 0, ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = driver.execute_script("return document.body.dataset.state")
            if state == "streaming":
                frames_while_streaming = int(driver.find_element(By.ID, "audio-received").get_attribute("data-frames") or 0)
            if state in ("done", "error"):
                break
            time.sleep(0.05)
        received = driver.find_element(By.ID, "audio-received")
        frames, out = int(received.get_attribute("data-frames")), int(received.get_attribute("data-samples")) / RATE
        scheduled = int(received.get_attribute("data-scheduled"))
        first_el = driver.find_element(By.ID, "first-audio")
        first, first_ms = first_el.text, first_el.get_attribute("data-ms")
        summary = driver.find_element(By.ID, "vc-summary")
        said = (summary.get_attribute("data-output-seconds"), summary.get_attribute("data-audio-seconds"))
        player = driver.execute_script("return window.speechkitPlayer && window.speechkitPlayer.state")
        replay = driver.find_element(By.ID, "vc-audio").get_attribute("src")
        status = driver.find_element(By.ID, "status-text").text
        console = [e.get("message", "") for e in driver.get_log("browser")]

    report = (f"state={state!r} status={status!r} frames={frames} ({frames_while_streaming} while streaming) "
              f"out={out:.3f} s of {seconds:.3f} s done={said!r} first={first!r} player={player!r} console={console[-5:]!r}")
    print(report)
    assert state == "done", f"the page did not finish: {report}; server log:\n{(tmp_path / 'serve.log').read_text()[-2000:]}"
    assert frames >= 10 and frames_while_streaming >= 5, report  # converted audio arrived as the microphone streamed
    assert scheduled == frames and player == "running", report  # every frame went to the speakers
    assert abs(out - seconds) <= 0.08 and float(said[0]) == round(out, 3) and float(said[1]) == round(seconds, 3), report
    assert re.fullmatch(r"\d+ ms", first) and 0 < float(first_ms) < 10_000, report
    assert replay.startswith("blob:"), report


def test_browser_page_speaks_typed_text_in_a_chosen_prompt_voice(tmp_path):
    """TTS mode of the same page, served by `speechkit serve TTS_MODEL` (a tiny random CLEAR with
    two preset prompt voices, see tests/test_serve_tts.py): the second preset is chosen, text is
    typed into the box and Speak clicked; speech frames come back and are scheduled for playback
    as they arrive, and they are exactly what the runtime makes of the same text, prompt and seed;
    the page shows the duration and the first-audio time."""
    import pytest
    from selenium.webdriver.common.by import By

    from speechkit.runtime.tts import Synthesizer
    from test_serve_tts import export_tiny_tts, runtime_frames

    problem = browser_problem()
    if problem:
        pytest.fail(problem)
    tts_dir = export_tiny_tts(tmp_path)
    text = "Hello there. How are you?"
    want = runtime_frames(Synthesizer(tts_dir), [text], str(tts_dir / "prompts" / "gb.wav"), 0)
    want_samples = sum(len(f) for f in want) // 2

    with served(tts_dir, log=tmp_path / "serve.log") as port, chromium(tts_dir / "prompts" / "f3.wav") as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 10  # /health read: a TTS-only server opens the page in TTS mode
        while driver.execute_script("return document.body.dataset.mode") != "tts" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [driver.find_element(By.ID, f"mode-{m}").get_attribute("disabled") is not None for m in ("asr", "vc")] == [True, True]
        prompts = driver.find_element(By.ID, "tts-prompt")
        assert [o.get_attribute("value") for o in prompts.find_elements(By.TAG_NAME, "option")] == ["f3", "gb", "upload"]
        prompts.find_element(By.CSS_SELECTOR, 'option[value="gb"]').click()
        box = driver.find_element(By.ID, "tts-text")
        box.clear()
        box.send_keys(text)
        start = driver.find_element(By.ID, "start")
        assert start.text == "Speak" and not driver.find_element(By.ID, "clock").is_displayed()  # no microphone here
        start.click()
        state = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = driver.execute_script("return document.body.dataset.state")
            if state in ("done", "error"):
                break
            time.sleep(0.05)
        received = driver.find_element(By.ID, "tts-received")
        frames, samples, scheduled = (int(received.get_attribute(f"data-{k}")) for k in ("frames", "samples", "scheduled"))
        first_el = driver.find_element(By.ID, "tts-first-audio")
        first, first_ms = first_el.text, first_el.get_attribute("data-ms")
        summary = driver.find_element(By.ID, "tts-summary")
        said = (summary.get_attribute("data-audio-seconds"), summary.get_attribute("data-first-audio-ms"))
        player = driver.execute_script("return window.speechkitPlayer && window.speechkitPlayer.state")
        replay = driver.find_element(By.ID, "tts-audio").get_attribute("src")
        heard = driver.execute_async_script(  # the replay wav's samples: what was played, frame after frame
            "const done = arguments[arguments.length - 1];"
            "fetch(document.getElementById('tts-audio').src).then((r) => r.arrayBuffer())"
            ".then((b) => done(Array.from(new Int16Array(b, 44))), (e) => done(String(e)));") if state == "done" else []
        status = driver.find_element(By.ID, "status-text").text
        console = [e.get("message", "") for e in driver.get_log("browser")]

    report = (f"state={state!r} status={status!r} frames={frames} (runtime {len(want)}) samples={samples} (runtime "
              f"{want_samples}) done={said!r} first={first!r} player={player!r} console={console[-5:]!r}")
    print(report)
    assert state == "done", f"the page did not finish: {report}; server log:\n{(tmp_path / 'serve.log').read_text()[-2000:]}"
    assert frames == len(want) and samples == want_samples, report  # the runtime's chunks, every one
    assert scheduled == frames and player == "running", report  # every frame went to the speakers as it came
    assert float(said[0]) == round(samples / RATE, 3) and 0 < float(said[1]) < 10_000, report
    assert re.fullmatch(r"\d+ ms", first) and 0 < float(first_ms) < 10_000, report
    assert replay.startswith("blob:"), report
    # the chosen voice's speech, sample for sample (the other preset gives other audio: tests/test_serve_tts.py)
    assert np.array_equal(np.asarray(heard, np.int16), np.frombuffer(b"".join(want), "<i2")), report
