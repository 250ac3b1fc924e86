"""Offline recognition with a trained experiment: load a checkpoint, batch waveforms by length,
decode with greedy or prefix beam search. A bad audio file is reported and skipped.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from speechkit.audio.fbank import compute_fbank, pad_feats
from speechkit.audio.io import load_audio
from speechkit.checkpoint import load_checkpoint
from speechkit.data.kaldi import load_data_dir, write_table
from speechkit.decoding.transducer import BeamState, modified_beam_search
from speechkit.errors import AudioError, SpeechkitError
from speechkit.models.asr.ctc_model import AsrEncoderModel
from speechkit.models.asr.heads import build_asr_model
from speechkit.models.asr.transducer import HybridTransducerModel
from speechkit.text.tokenizer import load_tokenizer

UNK_ID = 1  # both tokenizers' <unk>; the transducer search treats it as blank, as sherpa-onnx does
from speechkit.train.config import experiment_config_from_dict


@dataclass
class Recognizer:
    model: AsrEncoderModel
    tokenizer: object
    device: torch.device
    att_context: tuple[int, int] | None = None  # streaming encoders: None = the config's first
    decoder: str | None = None  # a hybrid transducer's head: "transducer" (None) or "ctc"

    @classmethod
    def from_exp_dir(cls, exp_dir: str | Path, checkpoint: str = "model_avg.pt", device: str | None = None) -> "Recognizer":
        exp_dir = Path(exp_dir)
        path = exp_dir / checkpoint
        ckpt = load_checkpoint(path)
        cfg = experiment_config_from_dict(ckpt["config"], source=str(path))
        tokenizer = load_tokenizer(exp_dir)
        model = build_asr_model(cfg.model, tokenizer.vocab_size, tokenizer)
        model.load_state_dict(ckpt["model"])
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model.to(dev).eval(), tokenizer, dev)

    @torch.no_grad()
    def recognize_feats(self, feats: list[np.ndarray], beam: int = 1) -> list[str]:
        """feats: list of (T, F) fbank arrays → one text each."""
        x, lens = (torch.from_numpy(a).to(self.device) for a in pad_feats(feats))
        if isinstance(self.model, HybridTransducerModel):
            if self.decoder in (None, "transducer") and beam > 1:
                ids = transducer_beam_search(self.model, x, lens, beam, self.att_context)
            else:
                ids = self.model.recognize(x, lens, beam, self.att_context, decoder=self.decoder or "transducer")
        elif self.decoder not in (None, "ctc"):
            raise SpeechkitError(f"--decoder {self.decoder} needs a transducer head; this model's head is '{self.model.cfg.head}'")
        else:
            ids = self.model.recognize(x, lens, beam, self.att_context)
        return [self.tokenizer.decode(list(i)) for i in ids]


@torch.no_grad()
def transducer_beam_search(model: HybridTransducerModel, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int,
                           att_context=None) -> list[list[int]]:
    """feats (B, T, F), feat_lens (B,) → token ids per utterance: the torch encoder, then the numpy
    modified beam search of speechkit.decoding (the runtime's) over the torch decoder and joiner."""
    enc, lens = model.encode(feats, feat_lens, att_context)
    enc_p = model.joiner.encoder_proj(enc).float().cpu().numpy()
    param = next(model.parameters())

    def decoder_fn(contexts: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(contexts).to(param.device)
        return model.joiner.decoder_proj(model.decoder(y)).float().cpu().numpy()

    def joiner_fn(e: np.ndarray, d: np.ndarray) -> np.ndarray:
        e, d = (torch.from_numpy(a).to(param.device, param.dtype) for a in (e, d))
        return model.joiner(e, d).float().cpu().numpy()

    starts = [BeamState.start(model.hc.context_size) for _ in range(len(enc_p))]
    states = modified_beam_search([e[:n] for e, n in zip(enc_p, lens.tolist())], starts, decoder_fn, joiner_fn, beam=beam,
                                  unk_id=UNK_ID)
    return [s.best(length_norm=True)[0] for s in states]


class _Features(torch.utils.data.Dataset):
    """Audio → fbank in DataLoader workers; a bad file becomes its one-line error."""

    def __init__(self, utts, cfg):
        self.utts, self.cfg = utts, cfg

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        """→ (index, fbank or None, the load error)."""
        try:
            samples, _ = load_audio(self.utts[i].wav, self.cfg.sample_rate)
        except AudioError as e:
            return i, None, str(e)
        return i, compute_fbank(samples, self.cfg), ""


def decode_data_dir(rec: Recognizer, data_dir: str | Path, out_dir: str | Path, *, beam: int = 1, batch_seconds: float = 120.0,
                    num_workers: int | None = None) -> int:
    """Write ``out_dir/hyp`` (Kaldi text) and ``out_dir/skipped.txt``; returns the number decoded.
    Features are computed by ``num_workers`` processes (default: up to 8 of the CPUs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = rec.model.cfg.frontend_conf
    utts = load_data_dir(data_dir)
    hyps: dict[str, str] = {}
    skipped: list[str] = []
    pending: list[tuple[str, np.ndarray]] = []
    max_frames = int(batch_seconds * cfg.frames_per_second)
    if num_workers is None:
        num_workers = min(8, (os.cpu_count() or 1) - 1)
    loader = torch.utils.data.DataLoader(_Features(utts, cfg), batch_size=None, num_workers=max(0, num_workers))

    def flush():
        texts = rec.recognize_feats([f for _, f in pending], beam)
        hyps.update({u: t for (u, _), t in zip(pending, texts)})
        pending.clear()

    for i, feats, error in tqdm(loader, total=len(utts), desc=f"decode {Path(data_dir).name}", unit="utt", file=sys.stderr):
        if feats is not None and rec.model.encoder.embed.output_lengths(torch.tensor(len(feats))).item() < 1:
            error = f"{utts[i].wav}: too short ({len(feats)} fbank frames; the subsampling needs more)"
        if error:
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            skipped.append(error)
            continue
        utt_id, feats = utts[i].utt_id, np.asarray(feats)
        longest = max([len(f) for _, f in pending] + [len(feats)])
        if pending and longest * (len(pending) + 1) > max_frames:
            flush()
        pending.append((utt_id, feats))
    if pending:
        flush()
    write_table(out_dir / "hyp", hyps)
    (out_dir / "skipped.txt").write_text("".join(s + "\n" for s in skipped))
    if not hyps:
        raise SpeechkitError(f"{data_dir}: no utterance could be decoded (see {out_dir}/skipped.txt)")
    return len(hyps)
