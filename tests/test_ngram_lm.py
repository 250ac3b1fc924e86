"""Word n-gram models (speechkit.decoding.ngram) and their fusion into the CTC prefix beam search:
Kneser-Ney distributions sum to one (pruned or not), ARPA files round-trip, the fused search picks
the sentence the model knows over a spelling the acoustics slightly prefer, zero weight changes
nothing, and the runtime and CLI take --lm with one-line errors for misuse."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.decoding.ctc import ctc_prefix_beam_search
from speechkit.decoding.ngram import BOS, EOS, UNK, LmConfig, NgramLM, WordFusion, train_ngram
from speechkit.errors import SpeechkitError
from speechkit.text.sentences import iter_sentences

ROOT = Path(__file__).resolve().parents[1]
STREAM = ROOT / "models" / "asr-stream-synth"


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return list(itertools.islice(iter_sentences(0, "train"), 1500))


@pytest.mark.parametrize("order,min_count", [(1, 1), (2, 1), (3, 1), (3, 2)])
def test_kneser_ney_distributions_sum_to_one(sentences, order, min_count):
    lm = train_ngram(sentences, order, min_count)
    words = sorted(lm.vocab) + [EOS, UNK]
    first = sentences[0].split()
    for ctx in [(BOS,), (first[0],), (BOS, first[0]), tuple(first[1:3]), ("neverseen", first[0])]:
        assert sum(math.exp(lm.logp(ctx, w)) for w in words) == pytest.approx(1.0, abs=1e-6)
    if min_count > 1:  # pruning keeps fewer top n-grams than the unpruned model
        assert len(lm.probs[order]) < len(train_ngram(sentences, order, 1).probs[order])


def test_higher_orders_predict_held_out_text_better(sentences):
    train, held = sentences[:1300], sentences[1300:]

    def ppl(lm):
        total = sum(lm.sentence_logp(s.split()) for s in held)
        return math.exp(-total / sum(len(s.split()) + 1 for s in held))

    uni, tri = ppl(train_ngram(train, 1)), ppl(train_ngram(train, 3))
    assert tri < 0.8 * uni


def test_arpa_round_trip_and_errors(sentences, tmp_path):
    lm = train_ngram(sentences[:300], 3, 2)
    lm.write_arpa(tmp_path / "lm.arpa")
    back = NgramLM.load(tmp_path / "lm.arpa")
    for s in sentences[300:330]:
        assert back.sentence_logp(s.split()) == pytest.approx(lm.sentence_logp(s.split()), abs=1e-3)
    with pytest.raises(SpeechkitError, match="no such language model"):
        NgramLM.load(tmp_path / "missing.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 a b c d\n\\end\\\n")
    with pytest.raises(SpeechkitError, match=r"bad.arpa:5: not an ARPA 1-gram line"):
        NgramLM.load(bad)
    (tmp_path / "text.arpa").write_text("hello world\n")
    with pytest.raises(SpeechkitError, match="not an ARPA language model"):
        NgramLM.load(tmp_path / "text.arpa")


PIECES = ["<blk>", "<unk>", "\u2581", "a", "c", "e", "h", "t"]


def _frames(spelling: str, margin: float) -> np.ndarray:
    """CTC log-probabilities that spell ``spelling`` one character per frame (blank between), with
    the spelt character ahead of the runner-up by ``margin`` nats where the two texts differ."""
    ids = {p: i for i, p in enumerate(PIECES)}
    rows = []
    for ch, alt in spelling:
        row = np.full(len(PIECES), -20.0)
        row[ids[ch]] = 0.0
        if alt:
            row[ids[alt]] = -margin
        rows.append(row)
        blank = np.full(len(PIECES), -20.0)
        blank[0] = 0.0
        rows.append(blank)
    x = np.stack(rows)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_fusion_prefers_the_known_sentence_and_zero_weight_changes_nothing():
    lm = train_ngram(["the cat ate", "a cat ate the hat", "the hat", "the cat"] * 5, 3)
    sp = "\u2581"
    # acoustics say "teh cat" (e before h), with "the" a close second at each of the two frames
    spelling = [("t", None), ("e", "h"), ("h", "e"), (sp, None), ("c", None), ("a", None), ("t", None)]
    log_probs = _frames(spelling, margin=0.5)
    text = lambda ids: "".join(PIECES[i] for i in ids).replace(sp, " ")
    plain = ctc_prefix_beam_search(log_probs, beam=8)
    assert text(plain[0][0]) == "teh cat"
    fused = ctc_prefix_beam_search(log_probs, beam=8, fusion=WordFusion(lm, PIECES, weight=1.0, bonus=0.0))
    assert text(fused[0][0]) == "the cat"
    zero = ctc_prefix_beam_search(log_probs, beam=8, fusion=WordFusion(lm, PIECES, weight=0.0, bonus=0.0))
    assert [ids for ids, _ in zero] == [ids for ids, _ in plain]
    assert [s for _, s in zero] == pytest.approx([s for _, s in plain])


def test_a_word_in_the_making_that_no_word_starts_with_pays_at_once():
    lm = train_ngram(["the cat ate"] * 3, 2)
    fusion = WordFusion(lm, PIECES, weight=1.0, bonus=0.0)
    state = fusion.initial
    for tok in (7, 6):  # "th": a prefix of "the"
        state = fusion.extend(state, tok)
    assert fusion.score(state) == 0.0
    odd = fusion.extend(fusion.extend(fusion.initial, 7), 7)  # "tt"
    assert fusion.score(odd) == pytest.approx(lm.unk)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_speech")
    x = synthesize(Voice("espeak-ng", "en-us", "espeak-0"), "the committee met on tuesday to vote", Prosody())
    sf.write(d / "a.wav", x, 16000, subtype="FLOAT")
    (d / "wav.scp").write_text(f"s-a {d / 'a.wav'}\n")
    (d / "text").write_text("s-a the committee met on tuesday to vote\n")
    (d / "utt2spk").write_text("s-a s\n")
    return d


def test_runtime_with_a_zero_weight_model_decodes_as_the_plain_beam(speech, sentences, tmp_path):
    from speechkit.runtime import OnlineRecognizer

    lm = train_ngram(sentences, 2)
    lm.write_arpa(tmp_path / "lm.arpa")
    x = sf.read(speech / "a.wav", dtype="float32")[0]
    plain = OnlineRecognizer(STREAM, beam=8).transcribe(x)
    zero = OnlineRecognizer(STREAM, beam=8, lm=LmConfig(str(tmp_path / "lm.arpa"), 0.0, 0.0)).transcribe(x)
    fused = OnlineRecognizer(STREAM, beam=8, lm=LmConfig(str(tmp_path / "lm.arpa"), 0.5, 1.0)).transcribe(x)
    assert zero == plain and plain and fused
    import speechkit

    assert speechkit.load(STREAM, beam=8, lm=tmp_path / "lm.arpa").transcribe(x).text == fused  # default weight and bonus
    with pytest.raises(SpeechkitError, match="give --beam > 1"):
        OnlineRecognizer(STREAM, beam=1, lm=LmConfig(str(tmp_path / "lm.arpa")))


def test_cli_trains_a_model_and_decodes_with_it(speech, tmp_path, run_cli):
    rc, out, _ = run_cli("lm", "train", tmp_path / "lm.arpa", "--sentences", "400", "--exclude", speech, "--eval", speech)
    assert rc == 0 and "3-gram LM from 400 sentences" in out and "perplexity" in out
    rc, out, _ = run_cli("decode-stream", STREAM, speech, tmp_path / "dec", "--beam", "8", "--lm", tmp_path / "lm.arpa")
    assert rc == 0 and (tmp_path / "dec" / "hyp").read_text().startswith("s-a ")
    rc, _, err = run_cli("decode-stream", STREAM, speech, tmp_path / "dec2", "--beam", "8", "--lm", tmp_path / "nope.arpa")
    assert rc != 0 and "nope.arpa: no such language model file" in err and "Traceback" not in err
    rc, _, err = run_cli("transcribe", ROOT / "models" / "asr-paraformer-synth", speech / "a.wav", "--lm", tmp_path / "lm.arpa")
    assert rc != 0 and "streaming CTC models' beam search only" in err


def test_bpe_pieces_score_the_same_words_as_characters():
    lm = train_ngram(["the cat ate", "a cat ate the hat"] * 3, 3)
    sp = "\u2581"
    char = WordFusion(lm, PIECES, weight=1.0, bonus=0.5)
    state = char.initial
    for ch in "the cat":
        state = char.extend(state, PIECES.index(sp if ch == " " else ch))
    bpe_pieces = ["<blk>", "<unk>", sp + "the", sp + "c", "at"]
    bpe = WordFusion(lm, bpe_pieces, weight=1.0, bonus=0.5)
    other = bpe.initial
    for tok in (2, 3, 4):
        other = bpe.extend(other, tok)
    expected = lm.sentence_logp(["the", "cat"]) + 0.5 * 2
    assert char.score(state, final=True) == pytest.approx(expected)
    assert bpe.score(other, final=True) == pytest.approx(expected)


def test_torch_decode_takes_the_lm_for_a_ctc_head(tmp_path, run_cli):
    from conftest import make_tiny_data_dir, make_tiny_exp_dir

    utts = make_tiny_data_dir(tmp_path / "data", n_utts=4)
    exp = make_tiny_exp_dir(tmp_path / "exp", [u.text for u in utts])
    train_ngram([u.text for u in utts] * 3, 2).write_arpa(tmp_path / "lm.arpa")
    common = ("--beam", "4", "--device", "cpu")
    assert run_cli("decode", exp, tmp_path / "data", tmp_path / "plain", *common)[0] == 0
    zero = ("--lm", tmp_path / "lm.arpa", "--lm-weight", "0", "--word-bonus", "0")
    assert run_cli("decode", exp, tmp_path / "data", tmp_path / "zero", *common, *zero)[0] == 0
    assert (tmp_path / "zero" / "hyp").read_text() == (tmp_path / "plain" / "hyp").read_text()
    assert run_cli("decode", exp, tmp_path / "data", tmp_path / "lm", *common, "--lm", tmp_path / "lm.arpa")[0] == 0
    rc, _, err = run_cli("decode", exp, tmp_path / "data", tmp_path / "b1", "--device", "cpu", "--lm", tmp_path / "lm.arpa")
    assert rc != 0 and "give --beam > 1" in err


def test_the_server_fuses_the_lm_into_its_streams(tmp_path, sentences):
    from speechkit.serve.server import SpeechServer

    train_ngram(sentences[:200], 2).write_arpa(tmp_path / "lm.arpa")
    server = SpeechServer(STREAM, beam=8, lm=LmConfig(str(tmp_path / "lm.arpa")))
    assert server.rec.create_stream().search.fusion is server.rec.fusion is not None
