"""Decode a whole Kaldi data dir through an exported model with ONNX Runtime, utterances batched
and spread over processes: a streaming CTC model chunk by chunk, a Paraformer in one pass per
padded batch. No torch."""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import load_data_dir, write_table
from speechkit.errors import AudioError
from speechkit.runtime.asr import OnlineRecognizer
from speechkit.runtime.console import model_family

_rec = None  # this process's recognizer (OnlineRecognizer or OfflineRecognizer)


def _init(model_dir: str, att_context, threads: int, beam: int = 1) -> None:
    global _rec
    if model_family(model_dir) == "paraformer":
        from speechkit.runtime.paraformer import OfflineRecognizer

        _rec = OfflineRecognizer(model_dir, num_threads=threads)
    else:
        _rec = OnlineRecognizer(model_dir, num_threads=threads, att_context=att_context, endpoint=None, beam=beam)


def _decode_batch(items: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    waves, keys, skipped = [], [], []
    for key, wav in items:
        try:
            samples, _ = load_audio(wav, _rec.sample_rate)
        except AudioError as e:
            skipped.append(str(e))
            continue
        waves.append(samples)
        keys.append(key)
    return dict(zip(keys, _rec.transcribe_batch(waves))), skipped


def decode_data_dir_streaming(model_dir, data_dir, out_dir, *, att_context=None, nj: int = 1, batch: int = 16, threads: int = 1,
                              beam: int = 1) -> int:
    """Write ``out_dir/hyp`` and ``out_dir/skipped.txt``; returns the number decoded."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _init(str(model_dir), att_context, threads, beam)  # fail here, once, on a bad model or context
    utts = sorted(load_data_dir(data_dir), key=lambda u: u.duration or 0.0)  # similar lengths share a batch
    batches = [[(u.utt_id, u.wav) for u in utts[i : i + batch]] for i in range(0, len(utts), batch)]
    hyps: dict[str, str] = {}
    skipped: list[str] = []
    bar = tqdm(total=len(utts), desc=f"stream-decode {Path(data_dir).name}", unit="utt", file=sys.stderr)
    if nj <= 1:
        results = map(_decode_batch, batches)
    else:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(nj, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(str(model_dir), att_context, threads, beam))
        results = pool.map(_decode_batch, batches)
    for (h, s), b in zip(results, batches):
        hyps.update(h)
        skipped.extend(s)
        for line in s:
            tqdm.write(f"skipped: {line}", file=sys.stderr)
        bar.update(len(b))
    bar.close()
    write_table(out_dir / "hyp", dict(sorted(hyps.items())))
    (out_dir / "skipped.txt").write_text("".join(line + "\n" for line in skipped))
    return len(hyps)
