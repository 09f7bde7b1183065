"""Spiking U-Seg-Net and its two non-spiking twins, over one shared topology.

Topology (paper section 3.1): a U-Net with ONE 3x3 conv per block, GroupNorm after each conv,
dropout, then the activation; max-pooling down, 2x2 deconvolution up, skip connections by
concatenation, and a 3x3 "readout integrator" conv giving ET/TC/WT logits per slice.

- ``spiking-useg``: activations are PLIF neurons; the membranes carry context from slice to
  slice (one slice = one time step). The deconvolution output also passes GroupNorm + PLIF,
  so every conv after the first is fed by spikes (accumulates, not multiply-accumulates).
- ``useg``: ReLU, no state: each slice on its own (the paper's U-Seg-Net baseline).
- ``useg-clstm``: ReLU plus a ConvLSTM at the bottleneck carrying inter-slice context
  (the paper's strongest baseline, U-Seg-Net+CLSTM).

Every model has two entry points over the same weights: :meth:`SliceSegNet.forward` over a
whole sequence (training) and :meth:`SliceSegNet.step` over one slice with the state as a flat
list of tensors (export). :meth:`SliceSegNet.step_counted` also returns, per conv layer, the
effective synaptic operations counted the NeuroBench way: ``sum(binary_layer(x != 0))``, and
per PLIF layer the membranes this step changed (NeuroBench's ``MembraneUpdates``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spikeseg.snn.architectures import SLICE_ARCHS
from spikeseg.snn.neurons import PLIF, RESETS, LeakyZero, NeuronStep, SpikingLayer
from spikeseg.snn.qcfs import QCFS

NEURONS = ("plif", "snntorch-leaky")
#: the twins' activation: ReLU, or QCFS (ReLU, then the step its converted SNN computes)
ACTIVATIONS = ("relu", "qcfs")

ARCHS = SLICE_ARCHS
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"widths": (8, 16, 32), "dropout": 0.1},
    "small": {"widths": (16, 32, 64), "dropout": 0.1},
    "paper": {"widths": (64, 128, 256, 512), "dropout": 0.2},
}
CONFIG_VERSION = 1
READOUT_PRIOR = 0.01


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    widths: tuple[int, ...]
    in_channels: int = 4
    out_channels: int = 3
    dropout: float = 0.1
    norm_groups: int = 4
    init_tau: float = 2.0
    tau_min: float = 1.0
    detach_reset: bool = False
    #: initial GroupNorm scale of the layers that feed PLIF neurons; tdBN (Zheng et al., AAAI
    #: 2021) scales normalised pre-activations to the threshold's size: with the input divided
    #: by tau, that is gain = V_th * init_tau (2.0), see :func:`tdbn_gain`
    norm_gain: float = 1.0
    learn_threshold: bool = False
    surrogate_width: float = 1.0
    neuron: str = "plif"
    #: after a spike the membrane is reset to "zero" (spikingjelly's default) or by "subtract"ing
    #: the threshold (the paper's own equation: the residual potential is kept)
    reset: str = "zero"
    #: what the readout integrator reads: the last layer's "spikes" (binary: the readout costs
    #: ACs) or its "membrane" potential before reset (analog: the readout's 3 output channels
    #: cost MACs; every other layer stays binary)
    readout_input: str = "spikes"
    #: the twins' activation (:data:`ACTIVATIONS`); a spiking model's is its neuron
    activation: str = "relu"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {ARCHS}")
        if self.readout_input not in ("spikes", "membrane"):
            raise ValueError(f"readout_input must be spikes or membrane, got {self.readout_input!r}")
        if self.neuron not in NEURONS:
            raise ValueError(f"unknown neuron {self.neuron!r}; choose from {NEURONS}")
        if self.reset not in RESETS:
            raise ValueError(f"unknown reset {self.reset!r}; choose from {RESETS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {ACTIVATIONS}")
        if self.activation != "relu" and self.arch == "spiking-useg":
            raise ValueError(f"activation {self.activation!r} is a twin's; the spiking model's is its neuron")

    @classmethod
    def preset(cls, arch: str, preset: str, **overrides: Any) -> "ModelConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
        return cls(arch=arch, **{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if d.get("version") != CONFIG_VERSION:
            raise ValueError(f"model config version {d.get('version')!r}, expected {CONFIG_VERSION}")
        return cls(**{**d, "widths": tuple(d["widths"])})


def tdbn_gain(init_tau: float, v_threshold: float = 1.0) -> float:
    """GroupNorm scale that makes a PLIF's first charge ``x / tau`` ~ N(0, V_th^2), as tdBN
    normalises pre-activations to N(0, (alpha V_th)^2) with alpha = 1. At gain 1 only
    P(z > 2) = 2.3 % of the neurons reach threshold on the first slice; at this gain 16 %."""
    return v_threshold * init_tau


def _neuron(cfg: "ModelConfig") -> SpikingLayer:
    if cfg.neuron == "snntorch-leaky":
        return LeakyZero(1.0 - 1.0 / cfg.init_tau, learn_threshold=cfg.learn_threshold,
                         surrogate_width=cfg.surrogate_width, reset=cfg.reset)
    return PLIF(cfg.init_tau, cfg.tau_min, detach_reset=cfg.detach_reset, learn_threshold=cfg.learn_threshold,
                surrogate_width=cfg.surrogate_width, reset=cfg.reset)


def _activation(cfg: "ModelConfig", spiking: bool) -> nn.Module:
    if spiking:
        return _neuron(cfg)
    return QCFS() if cfg.activation == "qcfs" else nn.ReLU()


def _norm(channels: int, cfg: "ModelConfig", spiking: bool) -> nn.GroupNorm:
    norm = nn.GroupNorm(_groups(channels, cfg.norm_groups), channels)
    if spiking:
        nn.init.constant_(norm.weight, cfg.norm_gain)
    return norm


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


def _nonzero_map(x: torch.Tensor, binary: bool) -> torch.Tensor:
    """Nonzero count over channels, (B, C, H, W) -> (B, H, W).

    ``binary``: ``x`` holds only 0 and 1 (spikes), so its sum is its nonzero count: one pass
    instead of compare, cast and sum; each map is computed once and shared between the layers
    that read it, which halves what counting adds to an SNN step (``benchmarks/latency.py``
    measures it: the ``+ counters`` row)."""
    return x.sum(dim=1) if binary else (x != 0).to(x.dtype).sum(dim=1)


def effective_ops(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample synaptic operations of ``layer`` on input ``x``, counted as NeuroBench does.

    NeuroBench sums the output of a copy of the layer whose weights are all 1 applied to
    ``x != 0``. For a stride-1 conv that is ``C_out * sum_{c,i,j} [x != 0] * taps(i, j)``, where
    ``taps`` counts the kernel positions that land inside the output (fewer at the border);
    for a kxk/stride-k deconvolution every input feeds k*k outputs per output channel.
    """
    return ops_from_map(layer, _nonzero_map(x, binary=False))


def ops_from_map(layer: nn.Module, nz: torch.Tensor) -> torch.Tensor:
    """:func:`effective_ops` from the input's per-position nonzero count ``nz`` (B, H, W), which
    the step computes once per activation and shares between the layers that read it."""
    if isinstance(layer, nn.ConvTranspose2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        return nz.sum(dim=(1, 2)) * float(layer.out_channels * k)
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    h, w = int(nz.shape[-2]), int(nz.shape[-1])

    def taps(n: int, k: int, p: int) -> torch.Tensor:
        out_n = n + 2 * p - k + 1
        return torch.tensor([sum(1 for r in range(k) if 0 <= i + p - r < out_n) for i in range(n)],
                            dtype=nz.dtype, device=nz.device)

    tap_map = taps(h, kh, ph)[:, None] * taps(w, kw, pw)[None, :]
    return (nz * tap_map).sum(dim=(1, 2)) * float(layer.out_channels)


class ActivationTap(nn.Identity):
    """Marks an activation output, so hooks (NeuroBench's, ours) can find exactly those."""


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Membranes whose stored potential changed: NeuroBench's count_nonzero(pre - post).

    Not every membrane every step: one at rest that gets no input, or one that fired on the
    last step and again now (0 -> reset to 0), is left as it was. Counted as numel minus the
    unchanged ones, which saves a logical-not pass over every membrane."""
    return float(after[0].numel()) - (after == before).to(after.dtype).sum(dim=(1, 2, 3))


class ConvBlock(nn.Module):
    """conv3x3 -> GroupNorm -> dropout -> activation (PLIF or ReLU)."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig, spiking: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = _norm(cout, cfg, spiking)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.act = _activation(cfg, spiking)
        self.tap = ActivationTap()

    def forward(self, x: torch.Tensor, v: torch.Tensor | None) -> NeuronStep | tuple[torch.Tensor, None, None]:
        """(activation, membrane left, potential before reset); the last two None without a neuron."""
        y = self.drop(self.norm(self.conv(x)))
        if v is None:
            return self.tap(self.act(y)), None, None
        step = self.act(y, v)
        return step._replace(spikes=self.tap(step.spikes))


class UpBlock(nn.Module):
    """deconv 2x2 -> GroupNorm -> activation, concatenated with the skip, then a ConvBlock."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig, spiking: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.norm = _norm(cout, cfg, spiking)
        self.act = _activation(cfg, spiking)
        self.tap = ActivationTap()
        self.block = ConvBlock(2 * cout, cout, cfg, spiking)

    def activate(self, x: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = self.norm(self.up(x))
        if v is None:
            return self.tap(self.act(y)), None
        step = self.act(y, v)
        return self.tap(step.spikes), step.membrane


class ConvLSTMCell(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(2 * channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class CountedStep(NamedTuple):
    """One slice's outputs with its counters (empty lists from :meth:`SliceSegNet.step`)."""

    logits: torch.Tensor
    state: list[torch.Tensor]
    ops: list[torch.Tensor]
    acts: list[torch.Tensor]
    mems: list[torch.Tensor]


class SliceSegNet(nn.Module):
    """The shared U topology; ``cfg.arch`` picks spiking, ReLU, or ReLU + ConvLSTM."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.spiking = cfg.arch == "spiking-useg"
        w = cfg.widths
        self.down = nn.ModuleList([ConvBlock(cfg.in_channels if i == 0 else w[i - 1], w[i], cfg, self.spiking)
                                   for i in range(len(w))])
        self.up = nn.ModuleList([UpBlock(w[i + 1], w[i], cfg, self.spiking) for i in reversed(range(len(w) - 1))])
        self.clstm = ConvLSTMCell(w[-1]) if cfg.arch == "useg-clstm" else None
        self.readout = nn.Conv2d(w[0], cfg.out_channels, 3, padding=1)
        # Tumour is ~1 % of voxels: start the readout at that prior (RetinaNet's trick) so the
        # first few hundred updates are not spent learning the background bias (measured: ~500).
        nn.init.constant_(self.readout.bias, -math.log((1 - READOUT_PRIOR) / READOUT_PRIOR))

    # ---- shapes and state -------------------------------------------------------------------
    @property
    def multiple(self) -> int:
        return 2 ** (len(self.cfg.widths) - 1)

    def padded(self, h: int, w: int) -> tuple[int, int]:
        m = self.multiple
        return -(-h // m) * m, -(-w // m) * m

    @property
    def stateful(self) -> bool:
        return self.spiking or self.clstm is not None

    def activation_specs(self, h: int, w: int) -> list[tuple[str, tuple[int, int, int]]]:
        """Names (:meth:`activation_names` order) and per-sample shapes of the activations."""
        ph, pw = self.padded(h, w)
        widths = self.cfg.widths
        specs = [(f"down{i}", (c, ph // 2**i, pw // 2**i)) for i, c in enumerate(widths)]
        for j, i in enumerate(reversed(range(len(widths) - 1))):
            shape = (widths[i], ph // 2**i, pw // 2**i)
            specs += [(f"up{j}.deconv", shape), (f"up{j}.conv", shape)]
        return specs

    def layer_grids(self, h: int, w: int) -> dict[str, tuple[int, int]]:
        """Input grid of every conv/deconv (:meth:`connection_layers` names) for an h x w slice."""
        ph, pw = self.padded(h, w)
        depth = len(self.cfg.widths)
        grids = {f"down{i}.conv": (ph // 2**i, pw // 2**i) for i in range(depth)}
        if self.clstm is not None:
            grids["clstm.gates"] = (ph // 2 ** (depth - 1), pw // 2 ** (depth - 1))
        for j, i in enumerate(reversed(range(depth - 1))):
            grids[f"up{j}.deconv"] = (ph // 2 ** (i + 1), pw // 2 ** (i + 1))
            grids[f"up{j}.conv"] = (ph // 2**i, pw // 2**i)
        grids["readout"] = (ph, pw)
        return grids

    def state_specs(self, h: int, w: int) -> list[tuple[str, tuple[int, int, int]]]:
        """Names and per-sample shapes (C, H, W) of the state tensors for an h x w slice.

        The SNN's state is one membrane per PLIF layer, shaped like that layer's activation."""
        ph, pw = self.padded(h, w)
        specs: list[tuple[str, tuple[int, int, int]]] = []
        if self.spiking:
            specs = [("v_" + name.replace(".", "_"), shape) for name, shape in self.activation_specs(h, w)]
        if self.clstm is not None:
            c, m = self.cfg.widths[-1], self.multiple
            specs += [("clstm_h", (c, ph // m, pw // m)), ("clstm_c", (c, ph // m, pw // m))]
        return specs

    def init_state(self, batch: int, h: int, w: int, device=None, dtype=torch.float32) -> list[torch.Tensor]:
        return [torch.zeros((batch,) + shape, device=device, dtype=dtype) for _, shape in self.state_specs(h, w)]

    def module_path(self, module: nn.Module) -> str:
        """Dotted path of a submodule: exported weights are named ``model.<path>.weight``."""
        return next(name for name, m in self.named_modules() if m is module)

    def connection_layers(self) -> list[tuple[str, nn.Module, bool]]:
        """(name, layer, fed by spikes) for every conv/deconv, in execution order."""
        out: list[tuple[str, nn.Module, bool]] = []
        for i, blk in enumerate(self.down):
            out.append((f"down{i}.conv", blk.conv, self.spiking and i > 0))
        if self.clstm is not None:
            out.append(("clstm.gates", self.clstm.gates, False))
        for j, blk in enumerate(self.up):
            out += [(f"up{j}.deconv", blk.up, self.spiking), (f"up{j}.conv", blk.block.conv, self.spiking)]
        out.append(("readout", self.readout, self.spiking and self.cfg.readout_input == "spikes"))
        return out

    # ---- one slice --------------------------------------------------------------------------
    def activation_names(self) -> list[str]:
        """Names of the activation outputs whose nonzero counts :meth:`step_counted` reports, in order."""
        return [name for name, _ in self.activation_specs(1, 1)]

    def step(self, x: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One slice: (logits, new state)."""
        counted = self._step(x, state, count=False)
        return counted.logits, counted.state

    def step_counted(self, x: torch.Tensor, state: list[torch.Tensor]) -> "CountedStep":
        """One slice with its operation counters (what the exported step graph outputs): the
        per-layer effective synaptic operations (:meth:`connection_layers` order), the per-layer
        counts of nonzero activations (:meth:`activation_names` order) and, for the SNN, the
        per-PLIF-layer counts of changed membranes (:meth:`state_specs` order), each (B,)."""
        return self._step(x, state, count=True)

    def _step(self, x: torch.Tensor, state: list[torch.Tensor], count: bool) -> "CountedStep":
        # plain ints: under ONNX tracing, shape values would otherwise become graph tensors and
        # the padding a dynamic computation (OpenVINO 2026.4 mis-evaluates that subgraph)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph, pw = self.padded(h, w)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        ops: list[torch.Tensor] = []
        acts: list[torch.Tensor] = []
        mems: list[torch.Tensor] = []
        it = iter(state)

        def membrane() -> torch.Tensor | None:
            return next(it) if self.spiking else None

        def updated(before: torch.Tensor | None, after: torch.Tensor | None) -> torch.Tensor | None:
            if count and after is not None:
                mems.append(_changed(before, after))
            return after

        spk = self.spiking  # every activation is 0/1 spikes; only the image and ConvLSTM are analog
        down_states, skips, skip_maps = [], [], []
        x_map = None
        for i, blk in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)
            if count:
                ops.append(ops_from_map(blk.conv, _nonzero_map(x, binary=spk and i > 0)))
            v = membrane()
            x, v_new, potential = blk(x, v)
            down_states.append(updated(v, v_new))
            if count:
                x_map = _nonzero_map(x, binary=spk)
                acts.append(x_map.sum(dim=(1, 2)))
                skip_maps.append(x_map)
            skips.append(x)
        if self.clstm is not None:
            hc, cc = next(it), next(it)
            if count:
                ops.append(effective_ops(self.clstm.gates, torch.cat([x, hc], 1)))
            hc, cc = self.clstm(x, hc, cc)
            x = hc
            clstm_state = [hc, cc]
            if count:
                x_map = _nonzero_map(x, binary=False)
        up_states = []
        for j, blk in enumerate(self.up):
            skip = skips[-2 - j]
            if count:
                ops.append(ops_from_map(blk.up, x_map))
            v1 = membrane()
            y, v1_new = blk.activate(x, v1)
            if count:
                y_map = _nonzero_map(y, binary=spk)
                acts.append(y_map.sum(dim=(1, 2)))
                ops.append(ops_from_map(blk.block.conv, y_map + skip_maps[-2 - j]))
            y = torch.cat([y, skip], 1)
            v2 = membrane()
            x, v2_new, potential = blk.block(y, v2)
            if count:
                x_map = _nonzero_map(x, binary=spk)
                acts.append(x_map.sum(dim=(1, 2)))
            up_states += [updated(v1, v1_new), updated(v2, v2_new)]
        if self.spiking and self.cfg.readout_input == "membrane":
            x = potential  # the last block's, before its reset
            if count:
                x_map = _nonzero_map(x, binary=False)
        if count:
            ops.append(ops_from_map(self.readout, x_map))
        logits = self.readout(x)[..., :h, :w]
        new_state = [v for v in down_states + up_states if v is not None]
        if self.clstm is not None:
            new_state += clstm_state
        return CountedStep(logits, new_state, ops, acts, mems)

    # ---- a whole sequence -------------------------------------------------------------------
    def forward(self, seq: torch.Tensor, state: list[torch.Tensor] | None = None,
                reset_every_step: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, T, C, H, W) -> logits (B, T, 3, H, W) and the final state.

        ``reset_every_step`` zeroes the state before each slice: the state-ablation control
        that shows whether the membrane's inter-slice context helps.
        """
        b, t, _, h, w = seq.shape
        if state is None:
            state = self.init_state(b, h, w, seq.device, seq.dtype)
        outs = []
        for k in range(t):
            if reset_every_step and k > 0:
                state = [torch.zeros_like(s) for s in state]
            logits, state = self.step(seq[:, k], state)
            outs.append(logits)
        return torch.stack(outs, 1), state


def build_model(cfg: ModelConfig) -> SliceSegNet:
    return SliceSegNet(cfg)
