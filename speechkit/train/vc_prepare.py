"""``speechkit vc prepare``: a Kaldi data dir → the voice-conversion dump read by
``speechkit.data.vc_dump.VcDump`` (its module doc gives the layout). Worker processes each open the
codec and content graphs (one ONNX Runtime thread) and the speaker encoder once; results are written
in data-dir order as they come, through temporary raw files, so memory does not grow with the corpus.
One bad file is reported in a line and left out; the others keep their features.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechkit.data.features import SerialPool
from speechkit.data.kaldi import load_data_dir
from speechkit.errors import AudioError, SpeechkitError

MAX_FRAME_MISMATCH = 2
_W: dict = {}  # the worker's models, opened once per process


def _init_worker(codec_dir: str, asr_dir: str, speaker_model: str, layer: int, att_context: tuple[int, int]) -> None:
    import torch

    from speechkit.models.speaker.io import load_speaker_encoder
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.runtime.content import ContentEncoder

    torch.set_num_threads(1)
    _W["codec"] = CodecRuntime(codec_dir, num_threads=1)
    _W["content"] = ContentEncoder(asr_dir, layer=layer, att_context=att_context, num_threads=1)
    _W["speaker"] = load_speaker_encoder(speaker_model)


def _features(item: tuple[str, str]):
    """(utt id, wav path) → (utt id, latents (F, D) f16, content (F, C) f16, embedding (S,) f32, error)."""
    from speechkit.audio.io import load_audio
    from speechkit.models.speaker.embed import embed_samples

    utt, wav = item
    codec = _W["codec"]
    try:
        x, _ = load_audio(wav, codec.sample_rate, resample=True, downmix=True)
        if len(x) < codec.hop * 2:
            raise AudioError(f"{wav}: {len(x) / codec.sample_rate:.3f} s of audio is too short")
        latents = codec.encode(x).T
        content = _W["content"].encode(x, codec.sample_rate)
    except (AudioError, SpeechkitError) as e:
        return utt, None, None, None, str(e)
    except Exception as e:  # a decoder's own error on a broken file: this file only
        return utt, None, None, None, f"{wav}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if abs(len(latents) - len(content)) > MAX_FRAME_MISMATCH:
        return utt, None, None, None, f"{wav}: {len(latents)} latent frames but {len(content)} content frames"
    n = min(len(latents), len(content))
    emb = embed_samples(_W["speaker"], x).astype(np.float32)
    return utt, latents[:n].astype(np.float16), content[:n].astype(np.float16), emb, None


def prepare_vc_dump(data_dir: str | Path, out_dir: str | Path, codec_dir: str | Path, asr_dir: str | Path,
                    speaker_model: str | Path, layer: int = 12, att_context: tuple[int, int] = (64, 4), nj: int = 0,
                    max_utts: int | None = None) -> dict:
    """Build the dump (see the module doc) with ``nj`` worker processes (0: all cores); returns its stats."""
    for path, what in ((codec_dir, "codec"), (asr_dir, "streaming ASR model"), (speaker_model, "speaker encoder")):
        if not Path(path).exists():
            raise SpeechkitError(f"{path}: no such {what}")
    utts = load_data_dir(data_dir)[:max_utts] if max_utts else load_data_dir(data_dir)
    if not utts:
        raise SpeechkitError(f"{data_dir}: no utterances")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    nj = nj or os.cpu_count() or 1
    initargs = (str(codec_dir), str(asr_dir), str(speaker_model), int(layer), tuple(att_context))
    if nj > 1:  # open the models here first: a path that is not a model is one line, not a pool of failing workers
        _init_worker(*initargs)
        _W.clear()
    kept, spks, embs, skipped, offsets = [], [], [], [], [0]
    spk_of = {u.utt_id: u.speaker for u in utts}
    dims = {}
    total = total_sq = None
    with open(tmp / "latents.bin", "wb") as lat_out, open(tmp / "content.bin", "wb") as con_out, \
            (mp.get_context("fork").Pool(nj, _init_worker, initargs) if nj > 1 else SerialPool(_init_worker, initargs)) as pool:
        results = pool.imap(_features, [(u.utt_id, u.wav) for u in utts], chunksize=4)
        for utt, lat, con, emb, err in tqdm(results, total=len(utts), desc=f"vc features {Path(data_dir).name}", unit="utt",
                                           file=sys.stderr, dynamic_ncols=True, mininterval=2):
            if err is not None:
                tqdm.write(f"speechkit: skipped {utt}: {err}", file=sys.stderr)
                skipped.append(f"{utt} {err}")
                continue
            lat_out.write(lat.tobytes())
            con_out.write(con.tobytes())
            dims = {"latent_dim": lat.shape[1], "content_dim": con.shape[1], "spk_dim": len(emb)}
            f = lat.astype(np.float64)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f**2).sum(0) if total_sq is None else total_sq + (f**2).sum(0)
            kept.append(utt)
            spks.append(spk_of[utt])
            embs.append(emb)
            offsets.append(offsets[-1] + len(lat))
    if not kept:
        raise SpeechkitError(f"{data_dir}: every utterance was skipped (see the messages above)")
    frames = offsets[-1]
    for name, dim in (("latents", dims["latent_dim"]), ("content", dims["content_dim"])):
        raw = np.memmap(tmp / f"{name}.bin", dtype=np.float16, mode="r", shape=(frames, dim))
        out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float16, shape=(frames, dim))
        for at in range(0, frames, 1 << 16):  # in slices: memory stays flat
            out[at : at + (1 << 16)] = raw[at : at + (1 << 16)]
        out.flush()
        del raw, out
        (tmp / f"{name}.bin").unlink()
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "spk_emb.npy", np.stack(embs).astype(np.float32))
    (tmp / "utt_ids.txt").write_text("".join(u + "\n" for u in kept))
    (tmp / "spk.txt").write_text("".join(s + "\n" for s in spks))
    (tmp / "skipped.txt").write_text("".join(s + "\n" for s in skipped))
    mean = total / frames
    std = np.sqrt(np.maximum(total_sq / frames - mean**2, 0.0))
    stats = {"frame_rate": 25.0, **dims, "content_layer": int(layer), "att_context": list(att_context),
             "latent_mean": mean.tolist(), "latent_std": std.tolist(), "codec": str(codec_dir), "asr": str(asr_dir),
             "speaker_model": str(speaker_model), "utterances": len(kept), "frames": int(frames),
             "hours": round(frames / 25.0 / 3600, 4), "skipped": len(skipped)}
    (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return stats


