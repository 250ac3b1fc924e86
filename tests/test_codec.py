"""The codecs on tiny configs: the shared SEANet stack streams exactly as it runs whole and is
causal (by gradients); the VAE and RVQ codecs' shapes, bitrates and streaming decoders; typed
configs; training resumes exactly; ONNX export with its parity check; the torch-free runtime;
the `speechkit codec` commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_tiny_data_dir, run_without_torch
from speechkit.errors import ConfigError
from speechkit.models.codec.model import CodecConfig, RvqConfig, build_codec, codec_config_from_dict
from speechkit.nn.seanet import SeanetConfig, SeanetDecoder, SeanetEncoder, channel_to_space, space_to_channel

TINY = SeanetConfig(channels=4, strides=(2, 4, 6), latent_dim=8, dilations=(1, 3), shortcuts=True, lstm_layers=1)  # hop 48
TINY_MEL_CONF = {"n_mels": 16, "frame_hop": 12, "win": 48, "channels": 8, "strides": [2, 2], "dilations": [1]}  # hop 48


pytestmark = pytest.mark.usefixtures("one_thread")


def _stream(module, x, chunk, rate_in):
    state, out = module.init_state(x.shape[0]), []
    for at in range(0, x.shape[-1], chunk * rate_in):
        piece = x[..., at : at + chunk * rate_in]
        y, _, state = module.forward_chunk(piece, torch.full((x.shape[0],), piece.shape[-1]), state)
        out.append(y)
    return torch.cat(out, -1)


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY, shortcuts=False, lstm_layers=0, strides=(2, 5))])
@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_equals_full(cfg, chunk):
    torch.manual_seed(0)
    enc, dec = SeanetEncoder(cfg).eval(), SeanetDecoder(cfg).eval()
    x = torch.randn(2, 1, cfg.hop * 9)
    with torch.no_grad():
        z = enc(x)
        assert z.shape == (2, cfg.latent_dim, 9)
        assert torch.allclose(_stream(enc, x, chunk, cfg.hop), z, atol=1e-5)
        assert torch.allclose(_stream(dec, z, chunk, 1), dec(z), atol=1e-5)


def test_state_has_fixed_shapes():
    enc = SeanetEncoder(TINY)
    state = enc.init_state(2)
    _, _, new = enc.forward_chunk(torch.randn(2, 1, TINY.hop * 2), torch.tensor([96, 96]), state)
    assert [s.shape for s in new] == [s.shape for s in state]


def test_causal_by_gradients():
    torch.manual_seed(0)
    enc, dec = SeanetEncoder(TINY), SeanetDecoder(TINY)
    hop = TINY.hop
    x = torch.randn(1, 1, hop * 8, requires_grad=True)
    enc(x)[0, :, 3].sum().backward()  # latent frame 3 sees samples up to 4 × hop − 1, nothing later
    assert x.grad[0, 0, 4 * hop :].abs().max() == 0 and x.grad[0, 0, : 4 * hop].abs().max() > 0
    z = torch.randn(1, TINY.latent_dim, 8, requires_grad=True)
    dec(z)[0, 0, 5 * hop - 1].backward()  # the last sample of frame 4 sees latent frames ≤ 4
    assert z.grad[..., 5:].abs().max() == 0 and z.grad[..., 4].abs().max() > 0


def test_shortcuts_have_no_parameters_and_keep_a_constant():
    x = torch.full((1, 4, 12), 0.5)
    assert torch.allclose(space_to_channel(x, 2, 8), torch.full((1, 8, 6), 0.5))
    assert torch.allclose(channel_to_space(x, 4, 2), torch.full((1, 2, 48), 0.5))
    with_sc = sum(p.numel() for p in SeanetEncoder(TINY).parameters())
    assert with_sc == sum(p.numel() for p in SeanetEncoder(dataclasses.replace(TINY, shortcuts=False)).parameters())


def _mel_encoder(**kw):
    from speechkit.nn.mel_encoder import MelEncoder, MelEncoderConfig

    cfg = MelEncoderConfig(**{**TINY_MEL_CONF, "strides": (2, 2), "dilations": (1, 3), **kw})
    return MelEncoder(16000, cfg, 6)


@pytest.mark.parametrize("chunk", [1, 3])
def test_mel_encoder_streams_exactly_and_is_causal(chunk):
    torch.manual_seed(0)
    enc = _mel_encoder().eval()
    x = torch.randn(2, 1, 48 * 9)
    with torch.no_grad():
        z = enc(x)
        assert z.shape == (2, 6, 9)
        assert torch.allclose(_stream(enc, x, chunk, 48), z, atol=1e-5)
    x = x[:1].clone().requires_grad_(True)
    enc(x)[0, :, 3].sum().backward()  # latent frame 3 sees samples up to 4 × 48 − 1, nothing later
    assert x.grad[0, 0, 4 * 48 :].abs().max() == 0 and x.grad[0, 0, : 4 * 48].abs().max() > 0


def test_causal_log_mel_is_the_mel_power_of_each_hann_frame():
    from librosa.filters import mel

    from speechkit.nn.mel_encoder import LOG_FLOOR, LOG_SCALE, LOG_SHIFT, CausalLogMel, MelEncoderConfig

    cfg = MelEncoderConfig(n_mels=20, frame_hop=100, win=400)
    t = np.arange(1600) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    got = CausalLogMel(16000, cfg)(torch.from_numpy(x).view(1, 1, -1))[0].numpy()
    assert got.shape == (20, 16)
    padded = np.concatenate([np.zeros(300, np.float32), x])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[f * 100 : f * 100 + 400] * window for f in range(16)])  # frame f ends at sample (f + 1) × 100
    want = (np.log(np.maximum(mel(sr=16000, n_fft=400, n_mels=20) @ (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T, LOG_FLOOR)) + LOG_SHIFT) / LOG_SCALE
    assert np.abs(got - want).max() < 1e-3
    assert got[:, 8].argmax() == want[:, 8].argmax() and got[:, 8].max() > got[:, 0].max()  # the 440 Hz band, not the zero padding


def test_vae_shapes_kl_and_streaming_decode():
    torch.manual_seed(0)
    model = build_codec(CodecConfig("vae", encoder_conf=TINY))
    x = torch.randn(2, 1, TINY.hop * 6) * 0.1
    y, aux = model(x)
    assert y.shape == x.shape and aux["kl"] > 0 and aux["loss"].item() == pytest.approx(1e-3 * aux["kl"].item())
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(z, model.encode(x))  # the mean: deterministic
        state, pieces = model.decoder.init_state(2), []
        for k in range(z.shape[-1]):
            piece, state = model.decode_chunk(z[..., k : k + 1], state)
            pieces.append(piece)
        assert torch.allclose(torch.cat(pieces, -1), model.decode(z), atol=1e-5)


def test_rvq_codec_codes_bitrate_and_streaming_decode():
    torch.manual_seed(0)
    cfg = CodecConfig("rvq", encoder_conf=dataclasses.replace(TINY, shortcuts=False), rvq_conf=RvqConfig(n_q=4, codebook_size=16))
    model = build_codec(cfg)
    x = torch.randn(2, 1, TINY.hop * 6) * 0.1
    model(x)  # k-means initialises the codebooks
    model.eval()
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (2, 4, 6) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 16
        assert model.encode(x, n_q=2).shape == (2, 2, 6)
        state, pieces = model.decoder.init_state(2), []
        for k in range(0, 6, 2):
            piece, state = model.decode_chunk(codes[..., k : k + 2], state)
            pieces.append(piece)
        assert torch.allclose(torch.cat(pieces, -1), model.decode(codes), atol=1e-5)
    assert model.bitrate() == pytest.approx(16000 / 48 * 4 * 4)
    gpu_cfg = CodecConfig("rvq", encoder_conf=SeanetConfig(strides=(2, 4, 5, 8)))
    assert build_codec(gpu_cfg).bitrate() == 6000.0 and build_codec(gpu_cfg).bitrate(6) == 3000.0


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="even strides"):
        codec_config_from_dict({"codec": "vae", "encoder_conf": {"strides": [2, 5], "shortcuts": True}})
    with pytest.raises(ConfigError, match="unknown codec 'dac'"):
        codec_config_from_dict({"codec": "dac"})
    with pytest.raises(ConfigError, match="encoder_input 'mel': 'wav', or 'mel' for a vae codec"):
        codec_config_from_dict({"codec": "rvq", "encoder_input": "mel"})
    with pytest.raises(ConfigError, match="frame_hop 160 × strides \\[2, 2\\] = 640, not the decoder's hop 320"):
        codec_config_from_dict({"codec": "vae", "encoder_input": "mel"})
    from speechkit.train.codec import load_codec_experiment

    (tmp_path / "c.yaml").write_text("codec: vae\ntrain_conf:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: unknown key 'train_conf.batch_sise'"):
        load_codec_experiment(tmp_path / "c.yaml")


def _experiment(tmp_path, codec: str, steps: int) -> Path:
    """codec: vae, rvq, or vae_mel (a VAE with the log-mel encoder)."""
    conf = {"codec": codec.removesuffix("_mel"), "encoder_conf": {"channels": 4, "strides": [2, 4, 6], "latent_dim": 8, "dilations": [1],
                                                                 "shortcuts": codec == "vae"},
            "rvq_conf": {"n_q": 3, "codebook_size": 16}, "optim_conf": {"warmup_steps": 2},
            "train_conf": {"max_steps": steps, "batch_size": 3, "segment_seconds": 0.3, "adv_start_step": 1, "disc_filters": 2,
                           "log_interval": 1, "save_interval_steps": 2}}
    if codec == "vae_mel":
        conf.update(encoder_input="mel", mel_conf=TINY_MEL_CONF)
    path = tmp_path / f"{codec}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.mark.parametrize("codec", ["vae", "rvq"])
def test_training_resumes_exactly(tmp_path, codec):
    from speechkit.train.codec import load_codec_experiment, train_codec

    data = tmp_path / "data"
    make_tiny_data_dir(data, n_utts=4)
    exp = load_codec_experiment(_experiment(tmp_path, codec, 4))
    train_codec(exp, [data], tmp_path / "whole", "cpu")
    train_codec(dataclasses.replace(exp, train_conf=dataclasses.replace(exp.train_conf, max_steps=2)), [data], tmp_path / "split", "cpu")
    train_codec(exp, [data], tmp_path / "split", "cpu")  # resumes at step 2
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [yaml.safe_load(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and "adversarial" in rows[-1] and ("kl" if codec == "vae" else "commit") in rows[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny trained VAE and RVQ experiments, exported, with their data dir."""
    from speechkit.cli import main

    root = tmp_path_factory.mktemp("codec")
    make_tiny_data_dir(root / "data", n_utts=4)
    out = {}
    for codec in ("vae", "rvq", "vae_mel"):
        assert main(["codec", "train", "--config", str(_experiment(root, codec, 3)), "--data", str(root / "data"),
                     "--exp-dir", str(root / codec), "--device", "cpu"]) == 0
        assert main(["codec", "export", str(root / codec), str(root / f"{codec}_onnx"), "--check-data", str(root / "data"),
                     "--chunk-frames", "2"]) == 0
        out[codec] = root / codec
    return root, out


@pytest.mark.parametrize("codec", ["vae", "rvq", "vae_mel"])
def test_export_and_runtime_stream_equal_torch(trained, codec):
    import json

    import soundfile as sf

    from speechkit.models.codec.io import load_codec
    from speechkit.runtime.codec import CodecRuntime

    root, exps = trained
    info = json.loads((root / f"{codec}_onnx" / "export.json").read_text())
    assert info["model_family"] == f"codec-{codec.removesuffix('_mel')}" and len(info["parity"]) == 3 and info["parity"][0]["chunks"] >= 3
    rt, model = CodecRuntime(root / f"{codec}_onnx"), load_codec(exps[codec])
    wav = sf.read(sorted((root / "data" / "wav").glob("*.wav"))[0], dtype="float32")[0]
    z = rt.encode(wav)
    n = -(-len(wav) // rt.hop) * rt.hop
    with torch.no_grad():
        ref_z = model.encode(torch.from_numpy(np.pad(wav, (0, n - len(wav)))).view(1, 1, n))[0].numpy()
        ref = model.decode(torch.from_numpy(ref_z)[None])[0, 0].numpy()
    assert (np.array_equal(z, ref_z) if codec == "rvq" else np.abs(z - ref_z).max() < 1e-4)
    dec = rt.stream()
    streamed = np.concatenate([dec.decode(z[:, k : k + 3]) for k in range(0, z.shape[1], 3)])
    assert np.abs(streamed - ref).max() < 1e-4 and np.abs(rt.decode(z) - ref).max() < 1e-4


@pytest.mark.parametrize("codec", ["vae", "vae_mel"])
def test_torch_codec_loads_the_export_and_matches_onnx_runtime(trained, codec):
    from speechkit.inference.codec import TorchCodec
    from speechkit.runtime.codec import CodecRuntime

    root, _ = trained
    ours = TorchCodec(root / f"{codec}_onnx")  # refuses to load unless its check against ONNX Runtime passes
    assert type(ours.model.encoder).__name__ == ("MelEncoder" if codec == "vae_mel" else "SeanetEncoder")
    wav = (0.1 * np.random.default_rng(1).standard_normal(48 * 7)).astype(np.float32)
    ref = CodecRuntime(root / f"{codec}_onnx")
    assert np.abs(ours.encode(wav) - ref.encode(wav)).max() < 1e-4
    assert np.abs(ours.decode(ref.encode(wav)) - ref.decode(ref.encode(wav))).max() < 1e-4


def test_runtime_needs_no_torch(trained):
    root, _ = trained
    out = run_without_torch(f"""
import numpy as np
from speechkit.runtime.codec import CodecRuntime
rt = CodecRuntime({str(root / 'rvq_onnx')!r})
print(rt.decode(rt.encode(np.zeros(4800, np.float32))).shape)""")
    assert out.strip() == "(4800,)"


def test_codec_commands(trained, tmp_path, run_cli):
    root, exps = trained
    wav = str(sorted((root / "data" / "wav").glob("*.wav"))[0])
    for model in (exps["rvq"], root / "rvq_onnx"):
        code, out, err = run_cli("codec", "encode", model, wav, tmp_path / "c.npy", "--n-q", "2")
        assert code == 0 and np.load(tmp_path / "c.npy").shape[0] == 2, err
        assert run_cli("codec", "decode", model, tmp_path / "c.npy", tmp_path / "d.wav")[0] == 0
        assert run_cli("codec", "resynth", model, wav, tmp_path / "r.wav")[0] == 0
    np.save(tmp_path / "bad.npy", np.zeros(5))
    code, _, err = run_cli("codec", "decode", exps["vae"], tmp_path / "bad.npy", tmp_path / "x.wav")
    assert code == 2 and "2-D array" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("codec", "resynth", exps["vae"], tmp_path / "missing.wav", tmp_path / "x.wav")
    assert code == 2 and "missing.wav" in err


def test_codec_eval_reports_every_metric(trained, run_cli, tmp_path):
    import json

    root, exps = trained
    code, out, err = run_cli("codec", "eval", exps["rvq"], root / "data", "--max-utts", "2", "--rtf-utts", "1", "--device", "cpu",
                             "--samples-dir", tmp_path / "s", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    row = r["splits"]["data"]["n_q=3 (3.33333 kbps)"] if "n_q=3 (3.33333 kbps)" in r["splits"]["data"] else \
        next(v for k, v in r["splits"]["data"].items() if k.startswith("n_q=3"))
    assert {"stoi", "pesq_wb", "mcd_db", "asr_resynth", "wer_delta", "usage", "bitrate_bps"} <= row.keys()
    assert 0 <= row["usage"]["mean_used"] <= 1 and r["rtf"]["cpu"]["decode"] > 0 and "training_usage" in r
    assert list((tmp_path / "s").glob("*_original.flac")) and list((tmp_path / "s").glob("*.png"))


def test_init_checkpoint_starts_from_given_weights(tmp_path):
    from speechkit.errors import SpeechkitError
    from speechkit.train.codec import load_codec_experiment, train_codec

    data = tmp_path / "data"
    make_tiny_data_dir(data, n_utts=3)
    exp = load_codec_experiment(_experiment(tmp_path, "rvq", 2))
    train_codec(exp, [data], tmp_path / "first", "cpu")
    init = dataclasses.replace(exp.train_conf, max_steps=0, init_checkpoint=str(tmp_path / "first" / "model.pt"))
    train_codec(dataclasses.replace(exp, train_conf=init), [data], tmp_path / "second", "cpu")
    a = torch.load(tmp_path / "first" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "second" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # codebooks included: no second k-means
    other = load_codec_experiment(_experiment(tmp_path, "vae", 0))
    with pytest.raises(SpeechkitError, match="another codec config"):
        train_codec(dataclasses.replace(other, train_conf=init), [data], tmp_path / "third", "cpu")


def test_a_bad_wav_is_reported_and_left_out(tmp_path, capsys):
    from speechkit.train.codec import WaveBank

    make_tiny_data_dir(tmp_path / "data", n_utts=3)
    scp = tmp_path / "data" / "wav.scp"
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    scp.write_text(scp.read_text() + f"zz-bad {tmp_path / 'bad.wav'}\n")
    bank = WaveBank([tmp_path / "data"], 16000, 1600)
    assert len(bank.waves) == 3 and "bad.wav" in capsys.readouterr().err
