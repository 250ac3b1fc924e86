"""`speechkit serve` with a CLEAR model (``/tts``): a tiny randomly initialised CLEAR over a tiny
random codec, exported, with two preset prompt voices; the frames a client gets are, one for one,
the runtime's own ``Synthesizer.stream`` chunks of the same text pieces, prompt and seed (after
the 16-bit quantisation of the wire), two clients at once each get their own, and every kind of
bad input (text before start, empty or too long text, nothing speakable, a 0.2 s or silent prompt,
an unknown preset, audio where text goes, an idle or too long stream) is closed with the
protocol's code and a one-line reason.

``export_tiny_tts`` is also used by the browser test (tests/test_serve_browser.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serve_harness import LiveServer, raw_session
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.decoding.tts_options import SynthOptions, split_text
from speechkit.serve.client import speak
from speechkit.serve.protocol import Close, Limits, ProtocolError, Start, decode_audio, parse_start, parse_text, pcm16

ROOT = Path(__file__).resolve().parents[1]
ASR_MODEL = ROOT / "models" / "asr-stream-synth"
RATE = 16000
LIMITS = Limits(max_frame_bytes=128 * 1024, max_stream_seconds=20.0, idle_timeout=1.5, max_connections=16,
                max_text_chars=400)
VOCAB_TEXTS = ["hello world, this is a test.", "the quick brown fox jumps over the lazy dog"]


def speech(voice: str, text: str) -> np.ndarray:
    """espeak-ng speech on the 16-bit grid, so that pcm16 sends it exactly."""
    x = synthesize(Voice("espeak-ng", voice, f"espeak-{voice}"), text, Prosody())
    return decode_audio(pcm16(x), Start(RATE, "pcm16"))


def export_tiny_tts(root: Path) -> Path:
    """A random CLEAR (d_model 32, 2 layers; the flow head's zero-initialised layers given weights
    so that the noise matters; the stop head never fires, so a piece lasts the length limit, 1 s +
    0.24 s per phoneme symbol) over a random VAE codec at 25 latents/s, exported as
    tests/test_tts_export.py does → the export dir ``root/onnx``, with two preset prompt voices in
    its ``prompts/``."""
    import torch

    from speechkit.export.codec import export_codec
    from speechkit.export.tts import export_tts
    from speechkit.models.codec.model import CodecConfig, build_codec
    from speechkit.models.tts.clear import ClearConfig, ClearTTS, FlowConfig
    from speechkit.models.tts.io import save_tts
    from speechkit.nn.seanet import SeanetConfig
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        enc = SeanetConfig(channels=2, strides=(2, 4, 8, 10), latent_dim=8, dilations=(1,), shortcuts=True)
        codec = build_codec(CodecConfig("vae", encoder_conf=enc)).eval()
        export_codec(codec, root / "codec", [np.random.default_rng(0).standard_normal(4 * 640).astype(np.float32) * 0.1])
        vocab = PhonemeVocab.build(text_to_phonemes(VOCAB_TEXTS))  # other symbols read <unk>
        cfg = ClearConfig(vocab_size=len(vocab), latent_dim=8, frame_rate=25.0, d_model=32, layers=2, heads=2, ff=64,
                          dropout=0.0, text_layers=1, align_layers=(1,), align_weight=0.1, flow=FlowConfig(hidden=32, blocks=2))
        model = ClearTTS(cfg).eval()
        with torch.no_grad():
            for p in model.head.parameters():
                if not p.any():
                    p.normal_(0.0, 0.5 if p.dim() == 1 else 0.05)
            model.latent_mean.normal_(0.0, 0.3)
            model.latent_std.uniform_(0.5, 1.5)
            model.stop.bias.fill_(-30.0)
        (root / "exp").mkdir(exist_ok=True)
        vocab.save(root / "exp" / "phones.txt")
        save_tts(model, vocab.symbols, str(root / "codec"), root / "exp" / "model.pt")
        export_tts(root / "exp", root / "onnx", VOCAB_TEXTS[0])
    finally:
        torch.set_num_threads(threads)
    out = root / "onnx"
    (out / "prompts").mkdir()
    sf.write(out / "prompts" / "gb.wav", speech("en-gb", "a quiet voice reads the morning news"), RATE, subtype="PCM_16")
    sf.write(out / "prompts" / "f3.wav", speech("en-us+f3", "the garden was full of yellow flowers"), RATE, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def tts_dir(tmp_path_factory) -> Path:
    return export_tiny_tts(tmp_path_factory.mktemp("serve-tts"))


@pytest.fixture(scope="module")
def live(tts_dir):
    server = LiveServer(tts_dir, LIMITS)
    yield server
    server.close()


@pytest.fixture(scope="module")
def tts(tts_dir):
    from speechkit.runtime.tts import Synthesizer

    return Synthesizer(tts_dir, num_threads=1)


# --- protocol ---------------------------------------------------------------------------------
def test_parse_a_tts_start_and_its_texts():
    assert parse_start('{"type": "start", "mode": "tts", "prompt": "gb"}', "tts") == Start(0, "pcm16", "tts", seed=0, prompt="gb")
    assert parse_start('{"type": "start", "prompt": "upload", "sample_rate": 24000, "format": "float32", "seed": 9}', "tts") == \
        Start(24000, "float32", "tts", seed=9, prompt="upload")
    for text, mode, words in [
        ('{"type": "start", "prompt": "upload"}', "tts", "sample_rate must be"),  # an upload says its rate
        ('{"type": "start", "prompt": "gb", "sample_rate": 5}', "tts", "sample_rate must be"),
        ('{"type": "start"}', "tts", "prompt must be"),
        ('{"type": "start", "prompt": ""}', "tts", "prompt must be"),
        ('{"type": "start", "prompt": "gb", "seed": -1}', "tts", "seed"),
        ('{"type": "start", "prompt": "gb", "reference": "gb"}', "tts", "unknown field 'reference'"),
        ('{"type": "start", "mode": "tts", "prompt": "gb"}', "vc", "served at /tts"),
        ('{"type": "text", "text": "hello"}', "tts", "the first message must be"),
    ]:
        with pytest.raises(ProtocolError) as e:
            parse_start(text, mode)
        assert words in e.value.reason and "\n" not in e.value.reason and e.value.code == Close.BAD_MESSAGE, text
    assert parse_text('{"type": "text", "text": "  Hello there.  "}', 100) == "Hello there."
    assert parse_text('{"type": "end"}', 100) is None
    for msg, words in [
        ('{"type": "text", "text": ""}', "nothing to say"), ('{"type": "text", "text": " \\n "}', "nothing to say"),
        (json.dumps({"type": "text", "text": "a" * 101}), "101 characters, more than the 100"),
        ('{"type": "text", "text": 5}', "must be a string"), ('{"type": "text", "text": "hi", "voice": "x"}', "unknown field"),
        ('{"type": "start", "prompt": "gb"}', "unexpected message type 'start'"), (b"\x00\x00", "binary"), ("hi", "not JSON"),
    ]:
        with pytest.raises(ProtocolError) as e:
            parse_text(msg, 100)
        assert words in e.value.reason and "\n" not in e.value.reason and e.value.code == Close.BAD_MESSAGE, (msg, e.value.reason)


# --- a live server ----------------------------------------------------------------------------
def runtime_frames(tts, texts: list[str], prompt, seed: int) -> list[bytes]:
    """What the server must send: each text's sentence pieces in order, each through the
    runtime's own stream, every chunk as one 16-bit frame."""
    opts = SynthOptions(steps=None, seed=seed)
    return [pcm16(chunk) for text in texts for piece in split_text(text) for chunk in tts.stream(piece, prompt, opts)]


def test_frames_are_the_runtimes_stream_in_order_then_done(live, tts, tts_dir):
    mine = ["Hello there. How are you today?", "hi"]  # two messages, the first in two pieces
    theirs = ["the quick brown fox"]
    upload = speech("en-us", "my own voice says a few words for the model")
    before = live.health()["tts"]

    async def run():
        return await asyncio.gather(speak(live.url("/tts"), mine, start={"prompt": "gb", "seed": 3}),
                                    speak(live.url("/tts"), theirs, prompt=upload))

    preset, uploaded = asyncio.run(run())
    after = live.health()["tts"]
    for r, want, texts in ((preset, runtime_frames(tts, mine, str(tts_dir / "prompts" / "gb.wav"), 3), mine),
                           (uploaded, runtime_frames(tts, theirs, upload, 0), theirs)):
        assert r.close_code == 1000, (r.close_code, r.close_reason, r.errors)
        assert [m["type"] for m in r.messages] == ["ready", "done"]
        ready, done = r.messages
        assert ready["mode"] == "tts" and ready["output_rate"] == RATE and ready["output_format"] == "pcm16"
        assert ready["max_text_chars"] == LIMITS.max_text_chars
        assert len(r.audio) == len(want) and r.audio == want  # frame for frame, in order
        assert done["texts"] == len(texts) and done["audio_seconds"] == round(len(r.output) / RATE, 3)
        assert 0 < done["first_audio_ms"] < (r.t_audio[0] - r.t_first_text) * 1000 + 50
        assert r.t_audio[-1] <= done["t"] and done["compute_seconds"] > 0
    # one synthesiser, taken in turns a chunk at a time: neither stream waited for the other to end
    t0 = preset.t_first_text
    print(f"tts turns: preset frames {preset.t_audio[0] - t0:.3f}..{preset.t_audio[-1] - t0:.3f} s, "
          f"upload frames {uploaded.t_audio[0] - t0:.3f}..{uploaded.t_audio[-1] - t0:.3f} s")
    assert uploaded.t_audio[0] < preset.t_audio[-1] and preset.t_audio[0] < uploaded.t_audio[-1]
    assert len(split_text(mine[0])) == 2 and preset.messages[0]["prompt"] == "gb" and preset.messages[0]["seed"] == 3
    assert uploaded.messages[0]["prompt"] == "upload"
    # the prompt and the seed matter: the same text in another voice or seed is other audio
    gb, f3 = str(tts_dir / "prompts" / "gb.wav"), str(tts_dir / "prompts" / "f3.wav")
    assert runtime_frames(tts, mine[1:], f3, 3) != runtime_frames(tts, mine[1:], gb, 3)
    assert runtime_frames(tts, mine[1:], gb, 4) != runtime_frames(tts, mine[1:], gb, 3)
    assert after["prompts"] == ["f3", "gb"]
    assert after["texts"] - before["texts"] == 3 and after["chunks"] - before["chunks"] == len(preset.audio) + len(uploaded.audio)
    assert after["connections_total"] - before["connections_total"] == 2


def test_bad_input_closes_with_its_code_and_reason(live):
    url = live.url("/tts")

    def start(**kw) -> str:
        return json.dumps({"type": "start", "mode": "tts", **kw})

    def text(s: str) -> str:
        return json.dumps({"type": "text", "text": s})

    voice = speech("en-gb", "a quiet voice reads the morning news")
    end = '{"type": "end"}'
    many = " ".join(["The river runs past the old mill and under the stone bridge."] * 4)  # > max_stream_seconds of speech

    async def run():
        return await asyncio.gather(
            raw_session(url, text("hello")),  # text before start
            raw_session(url, start(prompt="gb"), text("   "), end),  # empty text
            raw_session(url, start(prompt="gb"), text("x" * 10_000), end),  # over max_text_chars
            raw_session(url, start(prompt="upload", sample_rate=RATE), pcm16(voice[: RATE // 5]), text("hi"), end),  # 0.2 s prompt
            raw_session(url, start(prompt="upload", sample_rate=RATE), pcm16(np.zeros(2 * RATE, np.float32)), text("hi"), end),  # silent
            raw_session(url, start(prompt="upload", sample_rate=RATE), text("hi")),  # text where the prompt goes
            raw_session(url, start(prompt="nobody"), text("hi"), end),  # no such preset
            raw_session(url, start(prompt="gb"), text("hi"), text("🙂 🙂 ..."), end),  # nothing speakable, after a text said
            raw_session(url, start(prompt="gb"), pcm16(voice[:1600])),  # audio where text goes
            raw_session(url, start(prompt="f3"), text("héllo ☃ 你好 wörld"), end),  # unknown characters: said, not an error
            raw_session(url, start(prompt="gb"), text("hi")),  # says it, then hears nothing more
            raw_session(url, start(prompt="gb"), text(many), end),  # speech past max_stream_seconds
        )

    (early, empty, too_long, short, silent, not_audio, unknown, unspeakable, audio, unknown_chars, idle,
     past_limit) = asyncio.run(run())
    for (got, samples, code, reason), words in (
            (early, "the first message must be"), (empty, "nothing to say: the text is empty"),
            (too_long, "10000 characters, more than the 400 one message may have"),
            (short, "the prompt is 0.20 s long; a voice prompt needs at least 0.5 s"), (silent, "the prompt is silent"),
            (not_audio, "the next message must be the prompt audio"), (unknown, "unknown prompt 'nobody' (presets: f3, gb;"),
            (unspeakable, "nothing to say in '🙂 🙂 ...'"), (audio, "got binary data")):
        assert code == Close.BAD_MESSAGE, (words, code, reason)
        assert got[-1]["type"] == "error" and got[-1]["code"] == Close.BAD_MESSAGE and words in got[-1]["reason"], (words, got)
        assert "\n" not in got[-1]["reason"] and reason == got[-1]["reason"][:120]
        assert "done" not in [m["type"] for m in got]
    assert empty[1] == too_long[1] == short[1] == 0
    assert unspeakable[1] == 49 * 640  # "hi" was said (1 s + 4 symbols x 0.24 s = 49 latents) before the error
    got, samples, code, _ = unknown_chars
    assert code == 1000 and [m["type"] for m in got] == ["ready", "done"] and samples > 0 and got[-1]["texts"] == 1
    got, samples, code, _ = idle  # what was asked for is said, then the idle close
    assert code == Close.IDLE and [m["type"] for m in got] == ["ready", "done", "error"] and samples == 49 * 640
    assert "no message for 1.5 s" in got[-1]["reason"]
    got, samples, code, _ = past_limit  # said up to the limit, then told why
    assert code == Close.TOO_LONG and [m["type"] for m in got] == ["ready", "done", "error"]
    assert samples == LIMITS.max_stream_seconds * RATE and got[1]["audio_seconds"] == LIMITS.max_stream_seconds
    assert "longer than 20 s" in got[-1]["reason"]
    assert live.settled(live.server.tts_engine)  # nothing left behind


def test_tts_beside_asr_setup_errors_and_no_torch(tts_dir, tmp_path, run_cli):
    from conftest import run_without_torch
    from speechkit.errors import SpeechkitError
    from speechkit.serve.server import SpeechServer
    from speechkit.serve.tts_engine import load_prompts

    health = SpeechServer(ASR_MODEL, tts_dir=tts_dir).health()  # --tts beside an ASR model: one page, both modes
    assert health["modes"] == ["asr", "tts"] and health["tts"]["prompts"] == ["f3", "gb"] and health["tts"]["output_rate"] == RATE
    with pytest.raises(SpeechkitError, match="is a TTS model; --tts adds one"):
        SpeechServer(tts_dir, tts_dir=tts_dir)
    with pytest.raises(SpeechkitError, match="--prompts needs a TTS model"):
        SpeechServer(ASR_MODEL, prompts=tmp_path)
    with pytest.raises(SpeechkitError, match="no .wav files"):
        load_prompts(tmp_path, RATE)
    sf.write(tmp_path / "quiet.wav", np.zeros(RATE * 2, np.float32), RATE)
    with pytest.raises(SpeechkitError, match=r"quiet.wav: the prompt is silent"):
        load_prompts(tmp_path, RATE)
    (tmp_path / "quiet.wav").unlink()
    sf.write(tmp_path / "short.wav", speech("en-gb", "hello")[: RATE // 5], RATE)
    with pytest.raises(SpeechkitError, match=r"short.wav: the prompt is 0.20 s long"):
        load_prompts(tmp_path, RATE)
    code, _, err = run_cli("serve", str(tts_dir), "--tts", str(tts_dir))
    assert code == 2 and "--tts adds one" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("serve", str(tts_dir), "--prompts", str(tmp_path))
    assert code == 2 and "short.wav" in err and len(err.strip().splitlines()) == 1
    out = run_without_torch(f"""
from speechkit.serve.server import SpeechServer
s = SpeechServer({str(tts_dir)!r})
print(s.modes, s.health()["tts"]["prompts"])""")
    assert out.strip() == "['tts'] ['f3', 'gb']"
