"""``speechkit audiogen prepare``: a music data dir → the token dump ``speechkit.data.audiogen_dump``
reads (its module doc gives the layout). Every clip goes through a trained RVQ codec's encoder in
padded batches (on the GPU when given one) and keeps its first ``codebooks`` levels; the next
batch's audio is read on a thread while one is encoded. The encoder is causal, so the padding
behind a shorter clip never changes its codes. One unreadable clip is reported and left out.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from speechkit.audio.io import load_audio
from speechkit.data.audiogen_dump import CODE_DTYPE, AudiogenDumpWriter, file_sha256, model_file
from speechkit.data.kaldi import Utterance, load_data_dir
from speechkit.errors import AudioError, SpeechkitError
from speechkit.models.codec.io import load_codec
from speechkit.models.codec.model import RvqCodec

MIN_FRAMES = 2  # shorter clips are left out


def load_rvq_codec(codec: str | Path, codebooks: int, device: torch.device | str = "cpu") -> RvqCodec:
    """A trained codec (experiment dir or model.pt) that must be an RVQ codec of at least ``codebooks`` levels."""
    path = model_file(codec)
    if not path.is_file():
        raise SpeechkitError(f"{codec}: no such codec (a `speechkit codec train` experiment dir or its model.pt)")
    model = load_codec(path, device)
    if not isinstance(model, RvqCodec):
        raise SpeechkitError(f"{path}: a '{model.cfg.codec}' codec; text-to-music models token streams of an RVQ codec (codec: rvq)")
    if codebooks < 1 or codebooks > model.cfg.rvq_conf.n_q:
        raise SpeechkitError(f"{path}: an RVQ codec of {model.cfg.rvq_conf.n_q} levels; asked for {codebooks} codebooks")
    if model.cfg.rvq_conf.codebook_size > np.iinfo(CODE_DTYPE).max + 1:
        raise SpeechkitError(f"{path}: codebooks of {model.cfg.rvq_conf.codebook_size} entries do not fit the dump's int16 codes")
    return model


def codebooks_sha256(model: RvqCodec, codebooks: int) -> str:
    """sha256 of the first ``codebooks`` RVQ codebooks (float32): what the tokens mean. It survives a
    re-saved copy of the codec (e.g. split into parts and joined) whose file hash does not."""
    h = hashlib.sha256()
    for vq in model.quantizer.stages[:codebooks]:
        h.update(vq.codebook.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def codec_provenance(model: RvqCodec, codec: str | Path, codebooks: int) -> dict:
    """What a dump and the models trained on it record of their tokens."""
    path = model_file(codec)
    return {"codec": str(path.resolve()), "codec_sha256": file_sha256(path),
            "codebooks_sha256": codebooks_sha256(model, codebooks), "codebooks": codebooks,
            "card": model.cfg.rvq_conf.codebook_size, "frame_rate": model.cfg.frame_rate,
            "sample_rate": model.cfg.sample_rate, "hop": model.cfg.hop}


def _read(utt: Utterance, sample_rate: int) -> np.ndarray | str:
    """A clip's samples, or the reason it cannot be used."""
    try:
        x, _ = load_audio(utt.wav, sample_rate, resample=True, downmix=True)
    except (AudioError, SpeechkitError) as e:
        return str(e)
    except Exception as e:  # a decoder's own error on a broken file: this file only
        return f"{utt.wav}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return x


@torch.no_grad()
def encode_batch(model: RvqCodec, clips: list[np.ndarray], codebooks: int) -> list[np.ndarray]:
    """B clips of samples → each clip's codes [codebooks, ceil(len / hop)] (int64), one padded
    encoder call."""
    hop = model.cfg.hop
    frames = [-(-len(x) // hop) for x in clips]
    wav = np.zeros((len(clips), 1, max(frames) * hop), dtype=np.float32)
    for b, x in enumerate(clips):
        wav[b, 0, : len(x)] = x
    device = next(model.parameters()).device
    codes = model.encode(torch.from_numpy(wav).to(device), codebooks).cpu().numpy()
    return [codes[b, :, :f] for b, f in enumerate(frames)]


def prepare_audiogen_dump(data_dir: str | Path, out_dir: str | Path, codec: str | Path, codebooks: int = 4,
                          device: str | None = None, batch: int = 32, max_clips: int | None = None) -> dict:
    """Write the dump of ``data_dir`` (captions from its ``text``) to ``out_dir``; returns its stats."""
    if batch < 1:
        raise SpeechkitError(f"batch must be at least 1, got {batch}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_rvq_codec(codec, codebooks, device)
    utts = load_data_dir(data_dir)[:max_clips] if max_clips else load_data_dir(data_dir)
    rate = model.cfg.sample_rate
    writer = AudiogenDumpWriter(out_dir, codebooks)
    groups = [utts[i : i + batch] for i in range(0, len(utts), batch)]
    bar = tqdm(total=len(utts), desc=f"audiogen tokens {Path(data_dir).name}", unit="clip", file=sys.stderr,
               dynamic_ncols=True, mininterval=2)
    with ThreadPoolExecutor(4, thread_name_prefix="speechkit-read") as pool:
        pending = list(pool.map(_read, groups[0], [rate] * len(groups[0]))) if groups else []
        for g, group in enumerate(groups):
            audio = pending
            if g + 1 < len(groups):  # read the next batch while this one is encoded
                nxt = pool.map(_read, groups[g + 1], [rate] * len(groups[g + 1]))
            good = []
            for utt, x in zip(group, audio):
                if isinstance(x, str) or len(x) < MIN_FRAMES * model.cfg.hop:
                    why = x if isinstance(x, str) else f"{utt.wav}: {len(x) / rate:.3f} s of audio is too short"
                    tqdm.write(f"speechkit: skipped {utt.utt_id}: {why}", file=sys.stderr)
                    writer.skip(utt.utt_id, why)
                else:
                    good.append((utt, x))
            if good:
                for (utt, _), codes in zip(good, encode_batch(model, [x for _, x in good], codebooks)):
                    writer.add(utt.utt_id, utt.text, codes)
            bar.update(len(group))
            pending = list(nxt) if g + 1 < len(groups) else []
    bar.close()
    try:
        return writer.finish(codec_provenance(model, codec, codebooks), Path(data_dir) / "labels.jsonl")
    except SpeechkitError as e:
        raise SpeechkitError(f"{data_dir}: {e}") from None
