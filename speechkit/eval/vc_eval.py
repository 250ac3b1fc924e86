"""`speechkit vc eval`: any-to-any conversion of a test set and its judges.

Each source utterance of a prepared set (``speechkit vc prepare`` of, say, ``test_unseen``: voices
never heard in training) is converted to the voice of **another speaker** of the same set, the
reference being one utterance of that speaker; a second utterance of the target speaker, when there
is one, is the real recording the conversion should sound like. Scored, each beside its yardstick:

- speaker similarity to the reference (resemblyzer, which never saw these synthetic voices):
  converted, the unconverted source (the floor) and the target speaker's other real utterance (the
  ceiling);
- intelligibility: WER of pocketsphinx (independent of everything here) and of the project's ASR
  (sentences of its training text left out) on the converted speech and on the source;
- DNSMOS P.835 of the converted speech and of the source;
- the source's intonation kept: correlation of log-F0 contours (pYIN) of converted and source;
- speed: the whole path's real-time factor (model + streaming decoder) where it ran.

Several systems (``NAME=MODEL:SAMPLER:STEPS``: a mean-flow model at 1 and 2 steps, a model of the
same size trained by plain flow matching with Euler at 1, 2, 4, 10 steps, ...) convert the same
pairs with the same noise and are judged in one table. Conversion runs the torch model chunk by
chunk, as a stream (the KV cache), and the codec's streaming decoder; ``--judges none`` only
converts (on a GPU machine, say) into ``OUT/wav/NAME/``; a later run with ``--reuse`` judges them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechkit.errors import SpeechkitError
from speechkit.eval.wer import wer_percent

JUDGES = ("asr", "pocketsphinx", "resemblyzer", "dnsmos")
DEFAULT_CODEC = Path(__file__).resolve().parents[2] / "models" / "codec-vae-synth"


def vc_pairs(dump, data_dir: str | Path, max_utts: int | None = None) -> list[dict]:
    """[{utt, i, text, wav, ref_utt, ref_i, ref_wav, target_utt, target_wav}]: source ``i`` of the
    dump with, as the target voice, the next speaker (sorted, cyclically); the reference is that
    speaker's first utterance and the target recording its second (None when it has one)."""
    from speechkit.data.kaldi import read_table

    d = Path(data_dir)
    wavs, texts = read_table(d / "wav.scp"), read_table(d / "text")
    by_spk: dict[str, list[int]] = {}
    for i, s in enumerate(dump.spk):
        by_spk.setdefault(s, []).append(i)
    speakers = sorted(by_spk)
    if len(speakers) < 2:
        raise SpeechkitError(f"{d}: conversion needs two or more speakers, the dump has {len(speakers)}")
    pairs = []
    for i, u in enumerate(dump.utt_ids):
        if u not in wavs or u not in texts:
            continue
        target = speakers[(speakers.index(dump.spk[i]) + 1) % len(speakers)]
        ref_i = by_spk[target][0]
        tgt = by_spk[target][1] if len(by_spk[target]) > 1 else None
        pairs.append({"utt": u, "i": i, "text": texts[u], "wav": wavs[u], "ref_utt": dump.utt_ids[ref_i], "ref_i": ref_i,
                      "ref_wav": wavs.get(dump.utt_ids[ref_i]), "target_utt": None if tgt is None else dump.utt_ids[tgt],
                      "target_wav": None if tgt is None else wavs.get(dump.utt_ids[tgt]),
                      "target_text": None if tgt is None else texts.get(dump.utt_ids[tgt])})
    if not pairs:
        raise SpeechkitError(f"{d}: none of the dump's utterances is in the data dir")
    return pairs[:max_utts] if max_utts else pairs


def parse_system(spec: str) -> dict:
    """``NAME=MODEL[:SAMPLER[:STEPS]]`` or ``MODEL`` → {name, model, sampler, steps} (defaults:
    meanflow, 1 step; the name defaults to SAMPLER-STEPS)."""
    name, _, rest = spec.rpartition("=")
    parts = rest.split(":")
    model = parts[0]
    sampler = parts[1] if len(parts) > 1 and parts[1] else "meanflow"
    try:
        steps = int(parts[2]) if len(parts) > 2 else 1
    except ValueError:
        raise SpeechkitError(f"--system {spec}: steps must be a whole number") from None
    if sampler not in ("meanflow", "euler") or steps < 1 or len(parts) > 3 or not model:
        raise SpeechkitError(f"--system {spec}: expected NAME=MODEL[:meanflow|euler[:STEPS]]")
    return {"name": name or f"{sampler}-{steps}", "model": model, "sampler": sampler, "steps": steps}


def convert_set(model, codec, dump, pairs: list[dict], wav_dir: Path, steps: int, sampler: str, seed: int, device) -> dict:
    """Convert every pair (torch model on ``device``, the codec's streaming ONNX decoder chunk by
    chunk) into ``wav_dir``; the model's per-chunk compute and the whole path's real-time factor."""
    import torch

    wav_dir.mkdir(parents=True, exist_ok=True)
    rtf, seconds = [], 0.0
    for p in tqdm(pairs, desc=f"convert {wav_dir.name}", unit="utt", dynamic_ncols=True, mininterval=2):
        _, content = dump.frames(p["i"])
        ref_lat, _ = dump.frames(p["ref_i"])
        g = torch.Generator().manual_seed(seed + p["i"])  # the same noise for every system
        noise = torch.randn(1, len(content), model.cfg.latent_dim, generator=g).to(device)
        t0 = time.perf_counter()
        z = model.convert(torch.from_numpy(np.asarray(content, np.float32))[None].to(device),
                          torch.from_numpy(np.asarray(ref_lat, np.float32))[None].to(device),
                          torch.from_numpy(dump.spk_emb[p["ref_i"]])[None].to(device), steps=steps, noise=noise, sampler=sampler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        latents = z[0].float().cpu().numpy().T  # (D, F)
        stream = codec.stream()
        audio = np.concatenate([stream.decode(latents[:, k : k + model.cfg.chunk]) for k in range(0, latents.shape[1], model.cfg.chunk)])
        took = time.perf_counter() - t0
        sf.write(wav_dir / f"{p['utt']}.wav", audio, codec.sample_rate)
        dur = len(audio) / codec.sample_rate
        seconds += dur
        rtf.append(took / max(dur, 1e-9))
    return {"utterances": len(pairs), "seconds": round(seconds, 1), "steps": steps, "sampler": sampler,
            "rtf_median": round(float(np.median(rtf)), 4), "device": str(device)}


def copy_audio(pairs: list[dict], out_dir: Path) -> list[dict]:
    """The pairs' source, reference and target recordings copied into ``out_dir/audio`` (16 kHz
    mono), their paths made relative to ``out_dir``: the folder is judged anywhere, alone."""
    from speechkit.audio.io import load_audio

    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    out = []
    for p in pairs:
        q = dict(p)
        for key, utt in (("wav", p["utt"]), ("ref_wav", p["ref_utt"]), ("target_wav", p["target_utt"])):
            if p[key]:
                rel = f"audio/{utt}.wav"
                if not (out_dir / rel).is_file():
                    sf.write(out_dir / rel, load_audio(str(p[key]), 16000, resample=True, downmix=True)[0], 16000)
                q[key] = rel
        out.append(q)
    return out


def write_ceiling(codec, pairs: list[dict], wav_dir: Path) -> None:
    """The target speaker's other real recording through the codec (encode, streaming decode): the
    best a conversion into that voice can sound through our waveform decoder."""
    from speechkit.audio.io import load_audio

    wav_dir.mkdir(parents=True, exist_ok=True)
    for p in pairs:
        if p["target_wav"] and not (wav_dir / f"{p['utt']}.wav").is_file():
            x = load_audio(str(wav_dir.parents[1] / p["target_wav"]), codec.sample_rate, resample=True, downmix=True)[0]
            sf.write(wav_dir / f"{p['utt']}.wav", codec.decode(codec.encode(x))[: len(x)], codec.sample_rate)


def log_f0_correlation(a: np.ndarray, b: np.ndarray, sample_rate: int = 16000) -> float | None:
    """Pearson correlation of two clips' log-F0 contours (librosa's pYIN, 10 ms frames) over the
    frames voiced in both, after trimming to the shorter; None with fewer than 10 such frames."""
    import librosa

    def contour(x: np.ndarray) -> np.ndarray:
        f0, voiced, _ = librosa.pyin(x, fmin=60, fmax=500, sr=sample_rate, frame_length=1024, hop_length=160)
        return np.where(voiced, np.log(np.maximum(np.nan_to_num(f0, nan=1.0), 1.0)), np.nan)

    fa, fb = contour(a), contour(b)
    n = min(len(fa), len(fb))
    both = ~np.isnan(fa[:n]) & ~np.isnan(fb[:n])
    if both.sum() < 10:
        return None
    return float(np.corrcoef(fa[:n][both], fb[:n][both])[0, 1])


class _Judges:
    """The judges, built once, scoring sets of clips of the same pairs."""

    def __init__(self, judges: list[str], asr_model: str | None, threads: int):
        self.judges, self.asr_model, self.threads = judges, asr_model, threads
        self.sj = self.ps = self.dj = None
        if "resemblyzer" in judges:
            from speechkit.eval.tts_judges import SpeakerJudge

            self.sj = SpeakerJudge()
        if "pocketsphinx" in judges:
            from speechkit.eval.tts_judges import PocketsphinxJudge

            self.ps = PocketsphinxJudge()
        if "dnsmos" in judges:
            from speechkit.eval.tts_judges import DnsmosJudge

            self.dj = DnsmosJudge()

    def score(self, pairs: list[dict], clips: dict[str, np.ndarray], refs: dict, sources: dict | None,
              text_key: str = "text") -> dict:
        """``text_key``: the pairs' field holding what the clips say (the ceiling says the target's text)."""
        have = [p for p in pairs if p["utt"] in clips]
        texts = [p[text_key] for p in have]
        out: dict = {"utterances": len(have)}
        if self.sj is not None:
            sims = [self.sj.similarity(self.sj.embed(clips[p["utt"]], 16000), refs[p["ref_utt"]]) for p in have]
            out["similarity"] = round(float(np.mean(sims)), 4)
        if self.ps is not None:
            out["wer_pocketsphinx"] = wer_percent(texts, self.ps.transcribe_many([clips[p["utt"]] for p in have], 16000, jobs=self.threads), 2)
        if "asr" in self.judges and self.asr_model is not None:
            from speechkit.eval.audio_quality import asr_wer
            from speechkit.eval.heldout import held_out

            keep, record = held_out(texts, self.asr_model)
            kept = [p for p, k in zip(have, keep) if k]
            out["asr_heldout"] = record
            if kept:
                out["wer_asr"] = round(asr_wer([clips[p["utt"]] for p in kept], [p["text"] for p in kept], self.asr_model)["wer"], 2)
                out["asr_utterances"] = len(kept)
        if self.dj is not None:
            scores = [self.dj.score(clips[p["utt"]], 16000) for p in have]
            out["dnsmos_ovrl"] = round(float(np.mean([d["ovrl"] for d in scores])), 3)
            out["dnsmos_sig"] = round(float(np.mean([d["sig"] for d in scores])), 3)
        if sources is not None:
            corr = [log_f0_correlation(clips[p["utt"]], sources[p["utt"]]) for p in have]
            corr = [c for c in corr if c is not None]
            out["log_f0_corr"] = round(float(np.mean(corr)), 3) if corr else None
        return out


def evaluate_vc(systems: list[dict], dump_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *, judges: list[str],
                codec_dir: str | Path | None = None, asr_model: str | None = None, max_utts: int | None = None,
                seed: int = 0, device: str | None = None, threads: int = 1, reuse: bool = False) -> dict:
    """Every system ({name, model, sampler, steps}) converts the same pairs with the same noise;
    the judges score each beside the floor (the unconverted source) and the ceiling (the target
    speaker's own recording through the codec)."""
    unknown = set(judges) - set(JUDGES)
    if unknown:
        raise SpeechkitError(f"unknown judge(s) {', '.join(sorted(unknown))} (known: {', '.join(JUDGES)}, none)")
    names = [s["name"] for s in systems]
    if len(set(names)) != len(names) or {"source", "ceiling"} & set(names):
        raise SpeechkitError(f"system names must be distinct and not 'source' or 'ceiling': {', '.join(names)}")
    from speechkit.audio.io import load_audio
    from speechkit.data.vc_dump import VcDump
    from speechkit.runtime.codec import CodecRuntime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs_file = out_dir / "pairs.jsonl"
    if dump_dir is None:  # judging a folder converted elsewhere: its pairs and their audio are inside
        if not pairs_file.is_file():
            raise SpeechkitError(f"{pairs_file}: no such file; give --dump and --data to convert first")
        dump, pairs = None, [json.loads(line) for line in pairs_file.read_text().splitlines()]
        if not data_dir and (out_dir / "source.json").is_file():
            data_dir = json.loads((out_dir / "source.json").read_text())["data"]
    else:
        dump = VcDump.open(dump_dir)
        pairs = vc_pairs(dump, data_dir, max_utts)
        pairs = copy_audio(pairs, out_dir)
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        (out_dir / "source.json").write_text(json.dumps({"dump": str(dump_dir), "data": str(data_dir)}) + "\n")
    codec = CodecRuntime(codec_dir or (dump.stats.get("codec") if dump is not None else None) or DEFAULT_CODEC, num_threads=threads)
    result: dict = {"dump": str(dump_dir), "data": str(data_dir), "utterances": len(pairs), "systems": {}}
    for s in systems:
        wav_dir = out_dir / "wav" / s["name"]
        timing_file = wav_dir / "convert.json"
        if not (reuse and timing_file.is_file()):
            if dump is None:
                raise SpeechkitError(f"{timing_file}: no such file; give --dump and --data to convert with {s['name']}")
            import torch

            from speechkit.models.vc.io import load_vc

            dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            torch.set_num_threads(threads)
            model, _ = load_vc(s["model"], dev)
            timing = convert_set(model, codec, dump, pairs, wav_dir, s["steps"], s["sampler"], seed, dev)
            timing["chunk_ms"] = round(1000 * model.cfg.chunk / model.cfg.frame_rate)
            timing_file.write_text(json.dumps(timing, indent=1) + "\n")
        result["systems"][s["name"]] = {**s, "timing": json.loads(timing_file.read_text())}
    write_ceiling(codec, pairs, out_dir / "wav" / "ceiling")
    if judges:
        def read(path) -> np.ndarray:
            return load_audio(str(out_dir / path), 16000, resample=True, downmix=True)[0]

        j = _Judges(judges, asr_model, threads)
        refs = {p["ref_utt"]: j.sj.embed(read(p["ref_wav"]), 16000) for p in pairs} if j.sj is not None else {}
        sources = {p["utt"]: read(p["wav"]) for p in pairs}
        result["source"] = j.score(pairs, sources, refs, None)
        ceiling = {p["utt"]: read(Path("wav", "ceiling", f"{p['utt']}.wav")) for p in pairs if p["target_wav"]}
        result["ceiling"] = j.score(pairs, ceiling, refs, None, text_key="target_text") if ceiling else None
        for name in result["systems"]:
            clips = {p["utt"]: read(Path("wav", name, f"{p['utt']}.wav")) for p in pairs}
            result["systems"][name]["judges"] = j.score(pairs, clips, refs, sources)
    return result


def summary_lines(r: dict) -> list[str]:
    """One row per system, then the floor and the ceiling."""
    cols = [("similarity", "sim"), ("wer_pocketsphinx", "WER ps %"), ("wer_asr", "WER asr %"), ("log_f0_corr", "logF0 r"),
            ("dnsmos_ovrl", "DNSMOS"), ("rtf", "RTF")]
    lines = [f"{r['utterances']} conversions of {r['data']} into another speaker's voice",
             "| system | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(name: str, judged: dict | None, timing: dict | None) -> str:
        vals = dict(judged or {})
        if timing:
            vals["rtf"] = f"{timing['rtf_median']} ({timing['device']})"
        return f"| {name} | " + " | ".join(str(vals.get(k, "—")) for k, _ in cols) + " |"

    for name, s in r["systems"].items():
        lines.append(row(f"{name} ({s['sampler']}, {s['steps']} step{'s' if s['steps'] > 1 else ''})", s.get("judges"), s["timing"]))
    if "source" in r:
        lines.append(row("floor: the source, unconverted", r["source"], None))
    if r.get("ceiling"):
        lines.append(row("ceiling: the target speaker's other recording through the codec (WER against its own text)", r["ceiling"], None))
    return lines
