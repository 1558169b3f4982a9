"""The library's U-Net (mmdiff_jax/models/unet.py) plus its image head, in PyTorch, and a DDPM train step
doing what the image-only config's JAX step does: for the side-by-side speed benchmark only.

Mirrored layer for layer: the sinusoidal time embedding (cos then sin) and its two dense layers, the
3x3 input conv, ResBlocks (GroupNorm-SiLU-conv, + dense(SiLU(temb)), GroupNorm-SiLU-dropout-conv, 1x1
skip conv where the width changes), self-attention (GroupNorm, one qkv dense laid out (3, heads,
head_dim), scaled dot product, output dense) at the configured resolutions and in the middle, strided
3x3 downsampling convs, nearest 2x upsampling + 3x3 conv, skip concatenation (num_res_blocks + 1
blocks per decoder level), final GroupNorm-SiLU, and the image head's zero-initialised 3x3 conv.
GroupNorm eps is flax's 1e-6; initialisation is flax's (Glorot uniform, zeros where flax has zeros).
One difference, in alignment only: a stride-2 "SAME" conv in XLA pads (0, 1), here (1, 1) (same shapes
and FLOPs).

TrainStep and DDIMSampler run on any torch device (device="cuda" on a GPU), optionally under bf16 autocast
(parameters stay float32, as with the JAX config's model.dtype="bfloat16") and through torch.compile. CUDA
runs asynchronously: both return a Synchronizer, whose block_until_ready() waits for the device, so that
common.time_per_call (which blocks on the last result with common.block) reads its clock after the work
is done.

torch is a benchmark extra (pip install -e '.[bench]'), never a dependency of the library.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
  conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
  (nn.init.zeros_ if zero else nn.init.xavier_uniform_)(conv.weight)
  nn.init.zeros_(conv.bias)
  return conv


def _dense(cin: int, cout: int, zero: bool = False) -> nn.Linear:
  linear = nn.Linear(cin, cout)
  (nn.init.zeros_ if zero else nn.init.xavier_uniform_)(linear.weight)
  nn.init.zeros_(linear.bias)
  return linear


def _norm(groups: int, channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(groups, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
  """(B,) integer steps -> (B, dim) float32: cos then sin of t * max_period^(-k / half), k < half."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):

  def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, dropout: float):
    super().__init__()
    self.norm1, self.conv1 = _norm(groups, cin), _conv(cin, cout)
    self.temb = _dense(temb_dim, cout)
    self.norm2, self.conv2 = _norm(groups, cout), _conv(cout, cout, zero=True)
    self.dropout = nn.Dropout(dropout)
    self.skip = _conv(cin, cout, k=1) if cin != cout else None

  def forward(self, x, temb):
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return (self.skip(x) if self.skip is not None else x) + h


class AttentionBlock(nn.Module):

  def __init__(self, channels: int, heads: int, groups: int):
    super().__init__()
    self.heads = heads
    self.norm = _norm(groups, channels)
    self.qkv = _dense(channels, 3 * channels)
    self.proj = _dense(channels, channels, zero=True)

  def forward(self, x):
    b, c, h, w = x.shape
    tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    qkv = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, HW, head_dim)
    out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
    return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
  """The ADM-style U-Net of mmdiff_jax.models.unet.UNet plus the image ConvHead (NCHW)."""

  def __init__(self, *, in_channels: int, image_size: int, base_channels: int,
               channel_mults: Sequence[int], num_res_blocks: int,
               attention_resolutions: Sequence[int], num_heads: int, dropout: float,
               num_groups: int):
    super().__init__()
    c0, temb_dim = base_channels, 4 * base_channels
    self.base_channels = c0
    self.temb1, self.temb2 = _dense(c0, temb_dim), _dense(temb_dim, temb_dim)
    self.conv_in = _conv(in_channels, c0)
    res = lambda cin, cout: ResBlock(cin, cout, temb_dim, num_groups, dropout)
    attn = lambda ch: AttentionBlock(ch, num_heads, num_groups)

    self.down = nn.ModuleList()  # ("res", block, attn or None) or ("down", conv)
    skips, ch, size = [c0], c0, image_size
    for level, mult in enumerate(channel_mults):
      for _ in range(num_res_blocks):
        out = c0 * mult
        self.down.append(nn.ModuleList([res(ch, out)] + ([attn(out)] if size in attention_resolutions
                                                          else [])))
        ch = out
        skips.append(ch)
      if level != len(channel_mults) - 1:
        self.down.append(nn.ModuleList([_conv(ch, ch, stride=2)]))
        skips.append(ch)
        size //= 2
    self.mid = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
    self.up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(channel_mults))):
      for _ in range(num_res_blocks + 1):
        out = c0 * mult
        self.up.append(nn.ModuleList([res(ch + skips.pop(), out)] +
                                     ([attn(out)] if size in attention_resolutions else [])))
        ch = out
      if level != 0:
        self.up.append(nn.ModuleList([_conv(ch, ch)]))  # after nearest 2x upsampling
        size *= 2
    assert not skips
    self.norm_out = _norm(num_groups, ch)
    self.head = _conv(ch, in_channels, zero=True)

  def forward(self, x, t):
    temb = self.temb2(F.silu(self.temb1(timestep_embedding(t, self.base_channels))))
    h = self.conv_in(x)
    skips = [h]
    for block in self.down:
      if isinstance(block[0], ResBlock):
        h = block[0](h, temb)
        if len(block) > 1:
          h = block[1](h)
      else:
        h = block[0](h)
      skips.append(h)
    h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
    for block in self.up:
      if isinstance(block[0], ResBlock):
        h = block[0](torch.cat([h, skips.pop()], dim=1), temb)
        if len(block) > 1:
          h = block[1](h)
      else:
        h = block[0](F.interpolate(h, scale_factor=2, mode="nearest"))
    return self.head(F.silu(self.norm_out(h)))


def unet_from_config(config) -> UNet:
  m = config.model
  return UNet(in_channels=int(config.data.channels), image_size=int(config.data.image_size),
              base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
              num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
              num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups)


class Synchronizer:
  """What the steps return: common.block(x) (and jax.block_until_ready, by its duck typing) calls
  x.block_until_ready(), which here waits for the device's queued kernels (CUDA runs asynchronously; on
  the CPU torch returns when the work is done). value: the result (the sampler's images), if any."""

  def __init__(self, device: torch.device, value=None):
    self.device, self.value = device, value

  def block_until_ready(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
    return self


def compile_model(model: nn.Module, backend: str | None):
  """torch.compile(model) with `backend` ("inductor": the default, Triton kernels on CUDA and C++ on the
  CPU; "aot_eager": the graph capture and autograd tracing without code generation, a fast check);
  None: the eager model."""
  return torch.compile(model, backend=backend) if backend else model


class TrainStep:
  """One DDPM update, as the image-only JAX step: t ~ U{1..T}, z_t = sqrt(abar) x0 + sqrt(1 - abar) eps,
  MSE of the eps prediction, global-norm clipping, AdamW (config.optimizer; constant rate), EMA.

  device: "cpu" or "cuda" (the model, optimizer state, batch and alpha_bars live there; nothing is copied
  to the host during a step). autocast_bf16: the forward pass under torch.autocast(bfloat16) (convs,
  linears and attention in bf16; GroupNorm, softmax and the loss in float32; parameters, gradients and
  AdamW in float32). compile_backend: torch.compile the model (see compile_model; None: eager). On CUDA
  AdamW is the fused kernel (fused=True, PyTorch's fastest), on the CPU the foreach one.

  Calling the object runs one update on a fixed random batch (B, C, H, W) and returns a Synchronizer.
  """

  def __init__(self, config, alpha_bars, *, channels_last: bool = False, seed: int = 0, device: str = "cpu",
               autocast_bf16: bool = False, compile_backend: str | None = None):
    self.device = torch.device(device)
    torch.manual_seed(seed)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model = unet_from_config(config).to(device=self.device, memory_format=self.memory_format)
    self.model.train()
    self.forward = compile_model(self.model, compile_backend)
    self.autocast_bf16 = autocast_bf16
    self.params = [p for p in self.model.parameters()]
    self.ema = [p.detach().clone() for p in self.params]
    o = config.optimizer
    fused = self.device.type == "cuda"
    self.opt = torch.optim.AdamW(self.params, lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8,
                                 weight_decay=o.weight_decay, foreach=None if fused else True,
                                 fused=fused or None)
    self.clip = float(o.grad_clip_norm)
    self.ema_decay = float(config.training.ema_decay)
    self.num_timesteps = int(config.diffusion.num_timesteps)
    self.alpha_bars = torch.as_tensor(np.array(alpha_bars, np.float32), device=self.device)  # a writable copy
    b, size, c = int(config.training.batch_size), int(config.data.image_size), int(config.data.channels)
    self.x0 = (torch.rand(b, c, size, size, device=self.device) * 2 - 1).contiguous(
        memory_format=self.memory_format)
    self.batch_size = b

  @property
  def num_params(self) -> int:
    return sum(p.numel() for p in self.params)

  def __call__(self) -> Synchronizer:
    x0 = self.x0
    t = torch.randint(1, self.num_timesteps + 1, (x0.shape[0],), device=self.device)
    noise = torch.randn_like(x0)
    abar = self.alpha_bars[t - 1].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
      prediction = self.forward(z_t, t)
    loss = F.mse_loss(prediction.float(), noise)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
    return Synchronizer(self.device)


class DDIMSampler:
  """Deterministic DDIM (eta = 0) over the twin, the image-only case of mmdiff_jax's Sampler.sample.

  For each (t, s) of `timesteps` (decreasing, ending in 0: Sampler.timesteps()), one network evaluation at
  t, then z0-hat from the prediction ("eps", "v" or "z0" parameterization), clipped to [-1, 1], eps-hat
  recomputed from the clipped z0-hat, and z_s = sqrt(abar_s) z0-hat + sqrt(1 - abar_s) eps-hat
  (abar_0 = 1: the last step returns z0-hat). The abar values are Python floats, so the loop never waits
  for the device. Same seed, same model: the twin's own initialisation (its samples are not the JAX ones;
  only the work per step is the same).

  Calling the object with a batch size B generates (B, C, H, W) images under torch.inference_mode and
  returns a Synchronizer holding them.
  """

  def __init__(self, config, alpha_bars, timesteps, *, parameterization: str, seed: int = 0,
               device: str = "cpu", autocast_bf16: bool = False, compile_backend: str | None = None):
    if parameterization not in ("eps", "v", "z0"):
      raise ValueError(f"parameterization: got {parameterization!r}; expected 'eps', 'v' or 'z0'")
    self.device = torch.device(device)
    torch.manual_seed(seed)
    self.model = unet_from_config(config).to(self.device).eval()
    self.forward = compile_model(self.model, compile_backend)
    self.autocast_bf16 = autocast_bf16
    self.parameterization = parameterization
    self.abar = [1.0] + [float(a) for a in alpha_bars]  # abar[t] for t = 0..T
    self.timesteps = [int(t) for t in timesteps]
    self.shape = (int(config.data.channels), int(config.data.image_size), int(config.data.image_size))
    self.generator = torch.Generator(device=self.device)

  @property
  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())

  def __call__(self, batch_size: int) -> Synchronizer:
    self.generator.manual_seed(0)
    with torch.inference_mode():
      z = torch.randn(batch_size, *self.shape, device=self.device, generator=self.generator)
      for t, s in zip(self.timesteps[:-1], self.timesteps[1:]):
        t_vec = torch.full((batch_size,), t, dtype=torch.long, device=self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
          out = self.forward(z, t_vec)
        out = out.float()
        a_t, a_s = self.abar[t], self.abar[s]
        if self.parameterization == "v":
          z0 = math.sqrt(a_t) * z - math.sqrt(1 - a_t) * out
        elif self.parameterization == "eps":
          z0 = (z - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
        else:
          z0 = out
        z0 = z0.clamp(-1.0, 1.0)
        eps = (z - math.sqrt(a_t) * z0) / math.sqrt(1 - a_t)
        z = math.sqrt(a_s) * z0 + math.sqrt(1 - a_s) * eps
    return Synchronizer(self.device, z)
