"""Causal convolutional waveform encoder/decoder (the SEANet family of SoundStream and EnCodec),
shared by both codecs: weight-normalised causal convs, residual units with dilations 1/3/9,
strided down-sampling and transposed-conv up-sampling, an optional LSTM bottleneck, and
optional parameter-free shortcuts (space-to-channel averages on the way down, channel-to-space
copies on the way up, as in DC-AE) that let a high compression ratio train stably.

Streaming follows the project contract: ``init_state(batch)`` gives fixed-shape state tensors
(the past samples each conv needs, the overlap tail of each transposed conv, the LSTM's h/c) and
``forward_chunk(x, x_lens, state)`` returns ``(y, y_lens, new_state)``; chunks hold whole frames
(a multiple of the hop on the way in, whole latent frames on the way out) and give exactly the
full forward's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

State = list[Tensor]


@dataclass(frozen=True)
class SeanetConfig:
    channels: int = 32  # after the input conv; doubled by every down-sampling stage
    strides: tuple[int, ...] = (2, 4, 5, 8)  # hop = their product (320 = 50 frames/s at 16 kHz)
    latent_dim: int = 128  # the encoder's output channels (a VAE asks for 2 × its latent size)
    dilations: tuple[int, ...] = (1, 3, 9)  # residual units per stage
    kernel_size: int = 7
    lstm_layers: int = 0  # an LSTM bottleneck (EnCodec uses 2); 0 = none
    shortcuts: bool = False  # parameter-free space-to-channel / channel-to-space shortcuts (even strides only)

    @property
    def hop(self) -> int:
        return math.prod(self.strides)


class CausalConv1d(nn.Module):
    """A conv that sees only the past: ``context`` zeros (or, streaming, the last ``context``
    input samples) in front. Input length must be a multiple of the stride."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, kernel, stride, dilation=dilation))
        self.context = (kernel - 1) * dilation + 1 - stride
        if self.context < 0:
            raise ValueError(f"kernel {kernel} shorter than stride {stride}")
        self.cin = cin

    def forward(self, x: Tensor) -> Tensor:  # [B, Cin, T] → [B, Cout, T / stride]
        return self.conv(F.pad(x, (self.context, 0)))

    def init_state(self, batch: int, device=None) -> State:
        return [torch.zeros(batch, self.cin, self.context, device=device)] if self.context else []

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.context:
            return self.conv(x), []
        xc = torch.cat([state[0], x], dim=-1)
        return self.conv(xc), [xc[..., xc.shape[-1] - self.context :]]


class CausalConvTranspose1d(nn.Module):
    """Up-sampling by ``stride`` with kernel 2 × stride; the tail that would overlap the next
    frames is carried to the next chunk instead of being cut (streaming) or is dropped at the
    very end (full forward)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, 2 * stride, stride, bias=False))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.stride, self.cout = stride, cout

    def forward(self, x: Tensor) -> Tensor:  # [B, Cin, T] → [B, Cout, T × stride]
        return self.conv(x)[..., : x.shape[-1] * self.stride] + self.bias[:, None]

    def init_state(self, batch: int, device=None) -> State:
        return [torch.zeros(batch, self.cout, self.stride, device=device)]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y = self.conv(x)
        y = torch.cat([y[..., : self.stride] + state[0], y[..., self.stride :]], dim=-1)
        n = x.shape[-1] * self.stride
        return y[..., :n] + self.bias[:, None], [y[..., n:]]


def _chain(modules, x: Tensor, state: State) -> tuple[Tensor, State]:
    """Run streaming modules in order, each on its own slice of the flat state list."""
    out, at = [], 0
    for m in modules:
        if hasattr(m, "forward_chunk"):
            n = len(m.init_state(1, "meta"))
            x, new = m.forward_chunk(x, state[at : at + n])
            out += new
            at += n
        else:
            x = m(x)
    return x, out


def _init(modules, batch: int, device) -> State:
    return [t for m in modules if hasattr(m, "init_state") for t in m.init_state(batch, device)]


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.ELU(), CausalConv1d(channels, channels // 2, kernel, dilation=dilation),
                                     nn.ELU(), CausalConv1d(channels // 2, channels, 1)])

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for m in self.layers:
            h = m(h)
        return x + h

    def init_state(self, batch: int, device=None) -> State:
        return _init(self.layers, batch, device)

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, new = _chain(self.layers, x, state)
        return x + h, new


def space_to_channel(x: Tensor, stride: int, cout: int) -> Tensor:
    """[B, C, T] → [B, cout, T / stride]: each frame's ``stride`` samples become channels, then
    groups of channels are averaged down to ``cout`` — no parameters."""
    b, c, t = x.shape
    x = x.reshape(b, c, t // stride, stride).transpose(2, 3).reshape(b, c * stride, t // stride)
    return x.reshape(b, cout, c * stride // cout, t // stride).mean(2)


def channel_to_space(x: Tensor, stride: int, cout: int) -> Tensor:
    """[B, C, T] → [B, cout, T × stride]: channels are repeated up to cout × stride and laid out
    along time — the mirror of :func:`space_to_channel`."""
    b, c, t = x.shape
    x = x.repeat_interleave(cout * stride // c, dim=1)
    return x.reshape(b, cout, stride, t).transpose(2, 3).reshape(b, cout, t * stride)


class EncoderStage(nn.Module):
    def __init__(self, cin: int, stride: int, cfg: SeanetConfig):
        super().__init__()
        self.units = nn.ModuleList([ResidualUnit(cin, cfg.kernel_size, d) for d in cfg.dilations])
        self.act = nn.ELU()
        self.down = CausalConv1d(cin, 2 * cin, 2 * stride, stride)
        self.stride, self.shortcut = stride, cfg.shortcuts

    def forward(self, x: Tensor) -> Tensor:
        for u in self.units:
            x = u(x)
        y = self.down(self.act(x))
        return y + space_to_channel(x, self.stride, y.shape[1]) if self.shortcut else y

    def init_state(self, batch: int, device=None) -> State:
        return _init([*self.units, self.down], batch, device)

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        x, new = _chain(self.units, x, state[: len(state) - 1])
        y, down = self.down.forward_chunk(self.act(x), state[len(state) - 1 :])
        y = y + space_to_channel(x, self.stride, y.shape[1]) if self.shortcut else y
        return y, new + down


class DecoderStage(nn.Module):
    def __init__(self, cin: int, stride: int, cfg: SeanetConfig):
        super().__init__()
        self.act = nn.ELU()
        self.up = CausalConvTranspose1d(cin, cin // 2, stride)
        self.units = nn.ModuleList([ResidualUnit(cin // 2, cfg.kernel_size, d) for d in cfg.dilations])
        self.stride, self.shortcut = stride, cfg.shortcuts

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.act(x))
        if self.shortcut:
            y = y + channel_to_space(x, self.stride, y.shape[1])
        for u in self.units:
            y = u(y)
        return y

    def init_state(self, batch: int, device=None) -> State:
        return _init([self.up, *self.units], batch, device)

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, up = self.up.forward_chunk(self.act(x), state[:1])
        if self.shortcut:
            y = y + channel_to_space(x, self.stride, y.shape[1])
        y, new = _chain(self.units, y, state[1:])
        return y, up + new


class LstmBottleneck(nn.Module):
    """A unidirectional LSTM with a skip connection; its h/c are the streaming state."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True)
        self.dim, self.layers = dim, layers

    def forward(self, x: Tensor) -> Tensor:
        return x + self.lstm(x.transpose(1, 2))[0].transpose(1, 2)

    def init_state(self, batch: int, device=None) -> State:
        return [torch.zeros(self.layers, batch, self.dim, device=device) for _ in range(2)]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, (h, c) = self.lstm(x.transpose(1, 2), (state[0], state[1]))
        return x + y.transpose(1, 2), [h, c]


def _check(cfg: SeanetConfig, top: int) -> None:
    if cfg.shortcuts:
        odd = [s for s in cfg.strides if s % 2]
        if odd:
            raise ValueError(f"shortcuts need even strides, got {cfg.strides}")
        if top % cfg.latent_dim and cfg.latent_dim % top:
            raise ValueError(f"shortcuts need latent_dim {cfg.latent_dim} and {top} channels to divide one another")


class _Streaming(nn.Module):
    """The contract's entry points on top of a module list (``self.body``)."""

    rate_in: int = 1  # input frames per output frame (encoder: the hop)
    rate_out: int = 1  # output frames per input frame (decoder: the hop)

    def init_state(self, batch: int, device=None) -> State:
        return _init(self.body, batch, device)

    def forward_chunk(self, x: Tensor, x_lens: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """One chunk of whole frames; ``x_lens`` are carried through (all rows hold the chunk)."""
        y, new = _chain(self.body, x, state)
        return y, x_lens // self.rate_in * self.rate_out, new


class _Shortcut(nn.Module):
    """Parameter-free path around the latent projection: channels averaged (encoder) or repeated
    (decoder) between the top stage's width and the latent size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin, self.cout = cin, cout

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        if c >= self.cout:
            return x.reshape(b, self.cout, c // self.cout, t).mean(2)
        return x.repeat_interleave(self.cout // c, dim=1)


class _Projection(nn.Module):
    """A causal conv plus (with shortcuts) the parameter-free channel path."""

    def __init__(self, cin: int, cout: int, kernel: int, shortcut: bool):
        super().__init__()
        self.conv = CausalConv1d(cin, cout, kernel)
        self.shortcut = _Shortcut(cin, cout) if shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y + self.shortcut(x) if self.shortcut is not None else y

    def init_state(self, batch: int, device=None) -> State:
        return self.conv.init_state(batch, device)

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        y, new = self.conv.forward_chunk(x, state)
        return (y + self.shortcut(x) if self.shortcut is not None else y), new


class SeanetEncoder(_Streaming):
    """Waveform [B, 1, T] → latent frames [B, latent_dim, T / hop]."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        top = cfg.channels * 2 ** len(cfg.strides)
        _check(cfg, top)
        body: list[nn.Module] = [CausalConv1d(1, cfg.channels, cfg.kernel_size)]
        body += [EncoderStage(cfg.channels * 2**i, s, cfg) for i, s in enumerate(cfg.strides)]
        if cfg.lstm_layers:
            body.append(LstmBottleneck(top, cfg.lstm_layers))
        body += [nn.ELU(), _Projection(top, cfg.latent_dim, 3, cfg.shortcuts)]
        self.body = nn.ModuleList(body)
        self.cfg, self.rate_in = cfg, cfg.hop

    def forward(self, x: Tensor) -> Tensor:  # B: batch, T: samples (a multiple of the hop)
        for m in self.body:
            x = m(x)
        return x


class SeanetDecoder(_Streaming):
    """Latent frames [B, latent_dim, F] → waveform [B, 1, F × hop]."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        top = cfg.channels * 2 ** len(cfg.strides)
        _check(cfg, top)
        body: list[nn.Module] = [_Projection(cfg.latent_dim, top, cfg.kernel_size, cfg.shortcuts)]
        if cfg.lstm_layers:
            body.append(LstmBottleneck(top, cfg.lstm_layers))
        body += [DecoderStage(top // 2**i, s, cfg) for i, s in enumerate(reversed(cfg.strides))]
        body += [nn.ELU(), CausalConv1d(cfg.channels, 1, cfg.kernel_size)]
        self.body = nn.ModuleList(body)
        self.cfg, self.rate_out = cfg, cfg.hop

    def forward(self, z: Tensor) -> Tensor:  # B: batch, F: latent frames
        for m in self.body:
            z = m(z)
        return z
