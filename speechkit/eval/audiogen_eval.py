"""The text-to-music comparison (`speechkit audiogen eval`): each decoding system on a test split's
captions, judged by tempo, key, instruments and Fréchet distance beside the real renders and their
codec resynthesis (the ceiling), and timed at batch 1 and B."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from speechkit.errors import SpeechkitError

# the systems: (mode, rescored); a rescored system uses rescore_weight
SYSTEMS = {"magnet": ("magnet", False), "magnet_rescore": ("magnet", True), "hybrid": ("hybrid", False), "ar": ("ar", False)}
CEILING = "codec"  # the test renders through the codec (K codebooks): what a perfect token model could reach


def evaluate_audiogen(gen, opts, data: str | Path, judge_dir: str | Path, out_dir: str | Path, systems: list[str],
                      clips_wanted: int = 64, seconds: float = 10.0, batch: int = 32, rescore_weight: float = 0.5, seed: int = 0) -> dict:
    """With ``gen`` (a :class:`speechkit.inference.audiogen.MusicGeneratorTorch`) and its ``opts``:
    generate the first ``clips`` captions of the test split ``data`` with each system, judge them
    beside the codec's resynthesis of the real renders, time generation at batch 1 and ``batch``;
    writes OUT/wav/*, OUT/<system>.jsonl, OUT/eval.json and OUT/eval.md and returns the result."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from speechkit.audio.io import load_audio, save_audio
    from speechkit.eval.music_classifier import InstrumentJudge
    from speechkit.eval.music_judges import JUDGE_RATE, judge_clips, read_music_dir

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise SpeechkitError(f"--systems: unknown '{','.join(unknown)}' (known: {', '.join(SYSTEMS)})")
    if clips_wanted < 2 or batch < 1:
        raise SpeechkitError(f"clips must be at least 2 (the Fréchet distance needs two) and batch at least 1, got {clips_wanted} and {batch}")
    every = read_music_dir(data)
    clips = every[: clips_wanted]
    if len(clips) < 2:
        raise SpeechkitError(f"{data}: {len(clips)} clip; the eval needs at least 2")
    captions = [c.labels.get("caption") for c in clips]
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise SpeechkitError(f"{data}/labels.jsonl: every row needs its 'caption'")
    for s in systems:  # checked before any work
        gen.check_request(captions, seconds, SYSTEMS[s][0], rescore_weight if SYSTEMS[s][1] else 0.0, opts)
    judge = InstrumentJudge.load(judge_dir, gen.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [c.labels for c in clips]

    log(f"reference: the judge's embeddings of {len(every)} real renders of {data}")
    real, reference = [], []
    for c in tqdm(every, desc="reference", unit="clip", file=sys.stderr, dynamic_ncols=True, mininterval=2):
        x, _ = load_audio(c.wav, JUDGE_RATE, resample=True, downmix=True)
        reference.append(judge.embed(x, JUDGE_RATE))
        if len(real) < len(clips):
            real.append(x)
    reference = np.stack(reference)
    results, timing = {}, {}

    def judged(name: str, audio: list, rate: int, fd: bool = True) -> None:
        log(f"judging {name} ({len(audio)} clips)")
        rows, summary = judge_clips(audio, labels, judge, reference if fd else None, sample_rate=rate)
        if not fd:
            summary["fd"] = None  # its clips are in the reference set
        results[name] = summary
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    judged("real", real, JUDGE_RATE, fd=False)
    resynth = _resynthesise(gen, real, JUDGE_RATE)
    _save_all(out / "wav" / CEILING, clips, resynth, gen.sample_rate, save_audio)
    judged(CEILING, resynth, gen.sample_rate)
    for name in systems:
        mode, rescored = SYSTEMS[name]
        weight = rescore_weight if rescored else 0.0
        audio = []
        for i, at in enumerate(tqdm(range(0, len(captions), batch), desc=f"generate {name}", unit="batch", file=sys.stderr,
                                    dynamic_ncols=True)):
            audio += gen.generate(captions[at : at + batch], seconds, mode, weight, seed + i, opts)
        _save_all(out / "wav" / name, clips, audio, gen.sample_rate, save_audio)
        judged(name, audio, gen.sample_rate)
        timing[name] = _time_generation(gen, captions, seconds, mode, weight, opts, batch)
        results[name]["timing"] = timing[name]
        log(f"{name}: {seconds:g} s in {timing[name]['batch1_s']:.2f} s at batch 1, "
            f"{timing[name]['batchB_s_per_clip']:.3f} s a clip at batch {batch}")
    result = {"data": str(Path(data).resolve()), "clips": len(clips), "reference_clips": len(every), "seconds": seconds,
              "magnet": str(gen.magnet_path), "ar": str(gen.ar_path) if gen.ar_path else None, "codec": str(gen.codec_path),
              "device": str(gen.device) + (f" ({torch.cuda.get_device_name(gen.device)})" if gen.device.type == "cuda" else ""),
              "rescore_weight": rescore_weight, "hybrid_seconds": opts.hybrid_seconds,
              "magnet_steps": list(gen.magnet_options(opts, 0.0).steps), "seed": seed, "batch": batch,
              "judge": judge.card, "systems": results}
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "eval.md").write_text("\n".join(table_lines(result)) + "\n")
    return result


def log(msg: str) -> None:
    print(f"[{time.strftime('%T')}] {msg}", file=sys.stderr, flush=True)


def _resynthesise(gen, clips: list, rate: int) -> list:
    """Real renders through the codec's first K codebooks (the ceiling row)."""
    import numpy as np

    from speechkit.audio.io import resample_audio
    from speechkit.train.audiogen_prepare import encode_batch

    x = [resample_audio(c, rate, gen.sample_rate) for c in clips]
    out = []
    for at in range(0, len(x), 16):
        part = x[at : at + 16]
        codes = encode_batch(gen.codec, part, gen.codebooks)
        n = max(c.shape[1] for c in codes)
        padded = np.stack([np.pad(c, ((0, 0), (0, n - c.shape[1]))) for c in codes])
        out += [a[: len(p)] for a, p in zip(gen.decode(padded), part)]
    return out


def _save_all(folder: Path, clips, audio, rate: int, save_audio) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c, a in zip(clips, audio):
        save_audio(folder / f"{c.utt}.wav", a, rate)


def _time_generation(gen, captions: list[str], seconds: float, mode: str, weight: float, opts, batch: int) -> dict:
    """Wall seconds to generate ``seconds`` of audio for one caption and for ``batch`` captions (cycled);
    the models were warmed up by the eval's own generation."""
    import torch

    def timed(part: list[str]) -> float:
        if gen.device.type == "cuda":
            torch.cuda.synchronize(gen.device)
        t0 = time.perf_counter()
        gen.generate(part, seconds, mode, weight, 0, opts)
        return time.perf_counter() - t0  # generate returns host arrays: the device is done

    one = timed(captions[:1])
    many = timed([captions[i % len(captions)] for i in range(batch)])
    return {"seconds": seconds, "batch1_s": round(one, 3), "batch1_rtf": round(one / seconds, 4), "batch": batch,
            "batchB_s": round(many, 3), "batchB_s_per_clip": round(many / batch, 4), "batchB_rtf": round(many / batch / seconds, 5)}


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table_lines(result: dict) -> list[str]:
    """The eval as a markdown table, one row a system, the real renders and the codec ceiling first."""
    b = result["batch"]
    lines = [f"Text-to-music on {result['clips']} captions of {result['data']} ({result['seconds']:g} s each; FD against "
             f"{result['reference_clips']} real renders in the instrument judge's embedding; device {result['device']})", "",
             f"| system | tempo Acc1 | tempo Acc2 | key exact | key weighted | instruments found | instrument precision | FD "
             f"| {result['seconds']:g} s at batch 1 (s) | per clip at batch {b} (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"real": "real renders (the judges' own score)", CEILING: "ceiling: real renders through the codec",
             "magnet": "MAGNeT", "magnet_rescore": f"MAGNeT + AR rescoring (w = {result['rescore_weight']:g})",
             "hybrid": f"hybrid ({result['hybrid_seconds']:g} s AR, then MAGNeT)", "ar": "AR (delay pattern)"}
    for name, s in result["systems"].items():
        t = s.get("timing") or {}
        lines.append(f"| {names.get(name, name)} | {pct(s['tempo_acc1'])} | {pct(s['tempo_acc2'])} | {pct(s['key_exact'])} "
                     f"| {pct(s['key_weighted'])} | {pct(s.get('instrument_accuracy'))} | {pct(s.get('instrument_precision'))} "
                     f"| {num(s.get('fd'), 2)} | {num(t.get('batch1_s'), 2)} | {num(t.get('batchB_s_per_clip'), 3)} |")
    return lines
