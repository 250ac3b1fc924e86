"""`speechkit tts eval`: zero-shot synthesis of a test set and its judges.

Each utterance of DATA (speakers with two or more utterances) is synthesised from its transcript
with *another* utterance of the same speaker as the prompt — on ``test_unseen`` these voices were
never heard in training. Then, for the synthesised speech and, as the yardstick, the real
recording of the same utterance:

- intelligibility: WER by the project's ASR model and by pocketsphinx (an independent judge),
- speaker similarity to the prompt: cosine of resemblyzer embeddings,
- DNSMOS (P.835 SIG / BAK / OVRL),
- speed: real-time factor and first-audio latency (time to the first streamed chunk), medians.

Synthesis and judging are separable: ``--judges none`` only synthesises (on a GPU machine, say)
and writes ``OUT/wav/*.wav`` + ``OUT/synth.json``; a later run with ``--reuse`` judges them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechkit.data.kaldi import indices_by_engine, read_engines, read_table
from speechkit.errors import SpeechkitError
from speechkit.eval.wer import wer_percent

JUDGES = ("asr", "pocketsphinx", "resemblyzer", "dnsmos")


def _wers(idx: list[int], refs: list[str], hyps_synth: list[str], hyps_real: list[str]) -> dict:
    """The ASR judge's two WERs over the utterances at ``idx``."""
    sub = [refs[i] for i in idx]
    return {"utterances": len(idx), "wer_synth": wer_percent(sub, [hyps_synth[i] for i in idx], 2),
            "wer_real": wer_percent(sub, [hyps_real[i] for i in idx], 2)}


def eval_pairs(data_dir: str | Path, max_utts: int | None = None) -> list[dict]:
    """[{utt, text, wav, prompt_utt, prompt_wav[, engine]}]: every utterance with the next utterance
    of its speaker (cyclically, in sorted order) as the prompt; ``engine`` where the data dir has
    ``utt2synth``."""

    d = Path(data_dir)
    wavs, texts, spk = read_table(d / "wav.scp"), read_table(d / "text"), read_table(d / "utt2spk")
    by_spk: dict[str, list[str]] = {}
    for u in sorted(wavs):
        if u in texts and u in spk:
            by_spk.setdefault(spk[u], []).append(u)
    pairs = []
    for u in sorted(wavs):
        same = by_spk.get(spk.get(u), [])
        if len(same) < 2:
            continue
        p = same[(same.index(u) + 1) % len(same)]
        pairs.append({"utt": u, "text": texts[u], "wav": wavs[u], "prompt_utt": p, "prompt_wav": wavs[p]})
    if not pairs:
        raise SpeechkitError(f"{d}: no speaker with two or more utterances to prompt with")
    engines = read_engines(d, [p["utt"] for p in pairs])  # a synth corpus: the ASR judge's WER by engine too
    for p, engine in zip(pairs, engines or []):
        p["engine"] = engine
    return pairs[:max_utts] if max_utts else pairs


def load_synthesizer(model: str | Path, device: str | None = None, threads: int = 1):
    """An exported model dir (ONNX, torch-free runtime; ``device`` cpu, the default, or cuda) or a
    training experiment (torch; ``device`` None: cuda when there is one)."""
    model = Path(model)
    if (model / "ar_step.onnx").is_file():
        from speechkit.runtime.tts import Synthesizer

        return Synthesizer(model, num_threads=threads, device=device or "cpu")
    if (model / "model.pt").is_file():
        import torch

        from speechkit.inference.tts import TorchSynthesizer

        if device == "cpu" or (device is None and not torch.cuda.is_available()):
            torch.set_num_threads(threads)
        return TorchSynthesizer(model, device)
    raise SpeechkitError(f"{model}: neither an exported TTS model (ar_step.onnx) nor an experiment (model.pt)")


def synthesize_set(synth, pairs: list[dict], out_dir: Path, opts, reuse: bool = False) -> dict:
    """Synthesise every pair into ``out_dir/wav`` through the stream; timing per utterance."""
    from speechkit.audio.io import load_audio

    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    if hasattr(synth, "warmup"):
        synth.warmup(opts)  # CUDA graph capture and lazy GPU set-up, outside the timed utterances
    for pr in tqdm(pairs, desc="synthesise", unit="utt", mininterval=5):
        path = out_dir / "wav" / f"{pr['utt']}.wav"
        if reuse and path.is_file():
            continue
        prompt = load_audio(pr["prompt_wav"], synth.sample_rate, resample=True, downmix=True)[0]
        t0 = time.perf_counter()
        first, chunks = None, []
        for c in synth.stream(pr["text"], prompt, opts):
            if first is None:
                first = time.perf_counter() - t0
            chunks.append(c)
        total = time.perf_counter() - t0
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        sf.write(path, audio, synth.sample_rate)
        sec = len(audio) / synth.sample_rate
        rows.append({"utt": pr["utt"], "seconds": round(sec, 3), "synth_s": round(total, 4), "first_audio_s": round(first or total, 4)})
    if not rows:
        return {}
    secs = np.array([r["seconds"] for r in rows])
    return {"utterances": len(rows), "audio_seconds": round(float(secs.sum()), 2),
            "rtf_median": round(float(np.median([r["synth_s"] / max(r["seconds"], 1e-3) for r in rows])), 4),
            "rtf_total": round(sum(r["synth_s"] for r in rows) / max(float(secs.sum()), 1e-3), 4),
            "first_audio_ms_median": round(1000 * float(np.median([r["first_audio_s"] for r in rows])), 1),
            "first_audio_ms_p95": round(1000 * float(np.percentile([r["first_audio_s"] for r in rows], 95)), 1),
            "empty": int((secs == 0).sum()), "per_utt": rows}


def judge_set(pairs: list[dict], out_dir: Path, judges: list[str], asr_model: str | None, threads: int = 1) -> dict:
    """Scores of the synthesised wavs in ``out_dir/wav`` next to those of the real recordings."""
    from speechkit.audio.io import load_audio

    def read(p: str | Path) -> np.ndarray:
        return load_audio(str(p), 16000, resample=True, downmix=True)[0]

    have = [p for p in pairs if (out_dir / "wav" / f"{p['utt']}.wav").is_file()]
    heldout = None
    if "asr" in judges and asr_model is not None:
        from speechkit.eval.heldout import held_out

        keep, heldout = held_out([p["text"] for p in have], asr_model)
        have = [p for p, k in zip(have, keep) if k]
    if not have:
        raise SpeechkitError(f"{out_dir}/wav: no synthesised utterance to judge"
                             + (" outside the ASR judge's training text" if heldout and heldout["dropped"] else ""))
    # a model that stopped at once wrote no samples: judged as half a second of silence
    empty = {p["utt"] for p in have if sf.info(str(out_dir / "wav" / f"{p['utt']}.wav")).frames == 0}
    synth = {p["utt"]: np.zeros(8000, np.float32) if p["utt"] in empty else read(out_dir / "wav" / f"{p['utt']}.wav") for p in have}
    real = {p["utt"]: read(p["wav"]) for p in have}
    refs = [p["text"] for p in have]
    out: dict = {"utterances": len(have), "empty": len(empty)}
    if heldout is not None:
        out["judge_heldout"] = heldout
    if "asr" in judges:
        from speechkit.eval.audio_quality import asr_wer

        res_s = asr_wer([synth[p["utt"]] for p in have], refs, asr_model)
        res_r = asr_wer([real[p["utt"]] for p in have], refs, asr_model)
        hyp_s = res_s["hyps"]
        out["asr"] = {"model": str(asr_model), "wer_synth": round(res_s["wer"], 2), "wer_real": round(res_r["wer"], 2)}
        out["asr"]["ratio"] = round(out["asr"]["wer_synth"] / max(out["asr"]["wer_real"], 1e-9), 3)
        for p, h in zip(have, hyp_s):
            p["asr_hyp"] = h
        if any("engine" in p for p in have):
            # the judge has heard some engines' voices (its card's corpora): read them apart
            groups = indices_by_engine([p.get("engine", "unknown") for p in have])
            out["asr"]["by_engine"] = {e: _wers(idx, refs, res_s["hyps"], res_r["hyps"]) for e, idx in groups.items()}
    if "pocketsphinx" in judges:
        from speechkit.eval.tts_judges import PocketsphinxJudge

        ps = PocketsphinxJudge()
        hyp_s = ps.transcribe_many([synth[p["utt"]] for p in have], 16000, jobs=threads)
        hyp_r = ps.transcribe_many([real[p["utt"]] for p in have], 16000, jobs=threads)
        out["pocketsphinx"] = {"wer_synth": wer_percent(refs, hyp_s, 2), "wer_real": wer_percent(refs, hyp_r, 2)}
        out["pocketsphinx"]["ratio"] = round(out["pocketsphinx"]["wer_synth"] / max(out["pocketsphinx"]["wer_real"], 1e-9), 3)
    if "resemblyzer" in judges:
        from speechkit.eval.tts_judges import SpeakerJudge

        sj = SpeakerJudge()
        prompts = {p["prompt_utt"]: sj.embed(read(p["prompt_wav"]), 16000) for p in have}
        s_syn = [sj.similarity(sj.embed(synth[p["utt"]], 16000), prompts[p["prompt_utt"]]) for p in have]
        s_real = [sj.similarity(sj.embed(real[p["utt"]], 16000), prompts[p["prompt_utt"]]) for p in have]
        out["resemblyzer"] = {"sim_synth": round(float(np.mean(s_syn)), 4), "sim_real": round(float(np.mean(s_real)), 4)}
        out["resemblyzer"]["ratio"] = round(out["resemblyzer"]["sim_synth"] / max(out["resemblyzer"]["sim_real"], 1e-9), 3)
    if "dnsmos" in judges:
        from speechkit.eval.tts_judges import DnsmosJudge

        dj = DnsmosJudge()
        d_syn = [dj.score(synth[p["utt"]], 16000) for p in have]
        d_real = [dj.score(real[p["utt"]], 16000) for p in have]
        out["dnsmos"] = {f"{k}_{which}": round(float(np.mean([d[k] for d in ds])), 3)
                         for which, ds in (("synth", d_syn), ("real", d_real)) for k in d_syn[0]}
    return out


def evaluate_tts(model: str | Path, data_dir: str | Path, out_dir: str | Path, opts, *, judges: list[str],
                 asr_model: str | None = None, max_utts: int | None = None, device: str | None = None,
                 threads: int = 1, reuse: bool = False) -> dict:
    unknown = set(judges) - set(JUDGES)
    if unknown:
        raise SpeechkitError(f"unknown judge(s) {', '.join(sorted(unknown))} (known: {', '.join(JUDGES)}, none)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = eval_pairs(data_dir, max_utts)
    result: dict = {"model": str(model), "data": str(data_dir), "utterances": len(pairs), "options": vars(opts).copy()}
    synth = None
    if not (reuse and all((out_dir / "wav" / f"{p['utt']}.wav").is_file() for p in pairs)):
        synth = load_synthesizer(model, device, threads)
        timing = synthesize_set(synth, pairs, out_dir, opts, reuse)
        timing["device"] = getattr(synth, "device_name", "cpu")
        timing["threads"] = threads
        (out_dir / "synth.json").write_text(json.dumps(timing, indent=1) + "\n")
    if (out_dir / "synth.json").is_file():
        timing = json.loads((out_dir / "synth.json").read_text())
        result["timing"] = {k: v for k, v in timing.items() if k != "per_utt"}
    if judges:
        result["judges"] = judge_set(pairs, out_dir, judges, asr_model, threads)
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return result


def summary_lines(r: dict) -> list[str]:
    lines = [f"{r['data']}: {r['utterances']} utterances, zero-shot prompts (another utterance of the same speaker); "
             f"{r['options']['steps'] or 'default'} flow steps, guidance {r['options']['cfg_scale']}"]
    t = r.get("timing")
    if t:
        lines.append(f"  speed ({t.get('device')}, {t.get('threads')} thread(s)): RTF median {t['rtf_median']}, "
                     f"first audio median {t['first_audio_ms_median']} ms (p95 {t['first_audio_ms_p95']} ms)")
    j = r.get("judges", {})
    for name in ("asr", "pocketsphinx"):
        if name in j:
            lines.append(f"  {name} WER: synthesised {j[name]['wer_synth']} vs real {j[name]['wer_real']} (x{j[name]['ratio']})")
            for engine, e in j[name].get("by_engine", {}).items():
                lines.append(f"    {engine} ({e['utterances']} utts): synthesised {e['wer_synth']} vs real {e['wer_real']}")
    if "resemblyzer" in j:
        s = j["resemblyzer"]
        lines.append(f"  speaker similarity to the prompt: synthesised {s['sim_synth']} vs real {s['sim_real']} (x{s['ratio']})")
    if "dnsmos" in j:
        d = j["dnsmos"]
        lines.append("  DNSMOS " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return lines
