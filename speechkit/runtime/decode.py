"""Decode a whole Kaldi data dir through an exported model with ONNX Runtime, utterances batched
and spread over processes: a streaming CTC model chunk by chunk, a Paraformer in one pass per
padded batch. No torch.

Files are read a block at a time (a Paraformer's short files whole), so memory does not grow with
a file's length, and a file that cannot be read or decoded is reported, listed in
``skipped.txt`` and costs no other file its output."""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from speechkit.audio.io import read_blocks
from speechkit.data.kaldi import load_data_dir, write_table
from speechkit.errors import AudioError
from speechkit.runtime.asr import OnlineRecognizer, decoding_error
from speechkit.runtime.console import model_family, open_recognizer, refuse_lm

_rec = None  # this process's recognizer (OnlineRecognizer or OfflineRecognizer)


def _init(model_dir: str, att_context, threads: int, beam: int = 1, device: str = "cpu", lm=None) -> None:
    global _rec
    if model_family(model_dir) == "paraformer":
        from speechkit.runtime.paraformer import OfflineRecognizer

        if lm is not None:
            refuse_lm(model_dir, "paraformer")
        _rec = OfflineRecognizer(model_dir, num_threads=threads, device=device)
    else:
        _rec = open_recognizer(model_dir, num_threads=threads, att_context=att_context, endpoint=None, beam=beam, device=device, lm=lm)


def _decode_batch(items: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """(key, wav) pairs → (key → text, one line per file skipped)."""
    if isinstance(_rec, OnlineRecognizer):
        return _stream_batch(items)
    from speechkit.runtime.paraformer import recognize_paths

    hyps, skipped = {}, []
    for (key, _), (_, r) in zip(items, recognize_paths(_rec, [wav for _, wav in items], len(items), convert=False)):
        if isinstance(r, AudioError):
            skipped.append(str(r))
        else:
            hyps[key] = r.text
    return hyps, skipped


def _stream_batch(items: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Parallel streams fed a block at a time; a model failure is retried file by file to find
    the file at fault."""
    errors: list = []
    try:
        streams = _rec.run_streams([read_blocks(wav, 1.0, _rec.sample_rate) for _, wav in items], errors)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime failures have no common base class
        if len(items) == 1:
            return {}, [str(decoding_error(items[0][1], e))]
        hyps, skipped = {}, []
        for item in items:
            h, s = _stream_batch([item])
            hyps.update(h)
            skipped += s
        return hyps, skipped
    hyps = {key: _rec.text(s) for (key, _), s in zip(items, streams) if s is not None}
    return hyps, [str(e) for _, e in errors]


def decode_data_dir_streaming(model_dir, data_dir, out_dir, *, att_context=None, nj: int = 1, batch: int = 16, threads: int = 1,
                              beam: int = 1, device: str = "cpu", lm=None) -> int:
    """Write ``out_dir/hyp`` and ``out_dir/skipped.txt``; returns the number decoded."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _init(str(model_dir), att_context, threads, beam, device, lm)  # fail here, once, on a bad model or context
    utts = sorted(load_data_dir(data_dir), key=lambda u: u.duration or 0.0)  # similar lengths share a batch
    batches = [[(u.utt_id, u.wav) for u in utts[i : i + batch]] for i in range(0, len(utts), batch)]
    hyps: dict[str, str] = {}
    skipped: list[str] = []
    bar = tqdm(total=len(utts), desc=f"stream-decode {Path(data_dir).name}", unit="utt", file=sys.stderr)
    if nj <= 1:
        results = map(_decode_batch, batches)
    else:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(nj, mp_context=mp.get_context("spawn"), initializer=_init,
                                   initargs=(str(model_dir), att_context, threads, beam, device, lm))
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
