"""CPU ms per stream-second of the speech gate (speechkit.audio.vad) at a message size, the way a
server drives it: N streams of speech, each message to its own ``accept`` or all of one tick to one
``accept_many``. ``--vad FILE`` times another copy of the module (e.g. ``git show
HEAD:speechkit/audio/vad.py > /tmp/old_vad.py``) to compare against.

    python tools/gate_bench.py --streams 1000 --ms 20 --seconds 1 --runs 5
"""

import argparse
import importlib.util
import sys
import statistics
import time

import numpy as np
import soundfile as sf

SPEECH = ["egs/synth/codec/samples/original.flac", "egs/synth/codec/samples/unseen_original.flac",
          "egs/synth/tts/samples/espeak-en-029-grandma-test_unseen-000055.real.flac"]
RATE = 16000
WARM_SECONDS = 3.0  # untimed: the gates' noise-floor history is full, as in a running stream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--ms", type=int, nargs="+", default=[20, 100], help="message sizes")
    p.add_argument("--seconds", type=float, default=1.0, help="stream seconds timed a run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--path", choices=["accept", "many"], nargs="+", default=["accept", "many"])
    p.add_argument("--vad", help="a vad.py to time instead of speechkit.audio.vad")
    a = p.parse_args()
    if a.vad:
        spec = importlib.util.spec_from_file_location("vad_under_test", a.vad)
        vad = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(vad)
    else:
        from speechkit.audio import vad
    speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in SPEECH])
    warm, timed = int(WARM_SECONDS * RATE), int(a.seconds * RATE)
    starts = np.random.default_rng(0).integers(0, len(speech), a.streams)
    loop = np.concatenate([speech] * (1 + (warm + timed) // len(speech) + 1))
    audio = [loop[s : s + warm + timed] for s in starts]
    for path in a.path:
        for ms in a.ms:
            step, per_run = ms * RATE // 1000, []
            for _ in range(a.runs):
                gates = [vad.SpeechGate(RATE) for _ in audio]
                for g, x in zip(gates, audio):
                    g.accept(x[:warm])
                t0 = time.process_time()
                for at in range(warm, warm + timed, step):
                    if path == "accept":
                        for g, x in zip(gates, audio):
                            g.accept(x[at : at + step])
                    else:
                        vad.accept_many(gates, [x[at : at + step] for x in audio])
                per_run.append(1000 * (time.process_time() - t0) / (a.streams * a.seconds))
            print(f"{path:6s} {ms:4d} ms messages, {a.streams} streams: {statistics.median(per_run):.3f} CPU ms per "
                  f"stream-second (median of {a.runs}: {' '.join(f'{v:.3f}' for v in per_run)})", flush=True)


if __name__ == "__main__":
    main()
