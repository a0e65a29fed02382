"""The sequence cells behind `--cell`: what turns embedded tokens into hidden states.

Every cell maps e (B, T, I) and a carried state to h (B, T, H) and the new
state, and steps one token at a time for generation. A state is a tuple of
tensors with the batch on dim 1, so the trainer, the sampler and beam search
can zero, copy and reorder streams without knowing the cell.

    lstm            torch's fused LSTM (oneDNN on CPU, cuDNN on GPU): the default; trained
                    through kernels.py's C++ recurrence where that is faster (--lstm-kernel)
    lstm-reference  the same LSTM written out from the seed equations, one step at a
                    time, recording its gates; same parameter names, so it loads
                    an `lstm` run's weights and gives the same outputs
    gru             torch's GRU
    rnn             a plain tanh RNN, the cell whose gradients vanish
    transformer     a small causal Transformer (seed 002's next step): attention over
                    the tokens of this call plus `context` carried ones
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DECODE_PRECISIONS, ModelConfig
from .kernels import lstm_layers, loops_active

State = tuple[torch.Tensor, ...]  # each (L, B, ...): batch on dim 1


class Cell(Protocol):
    """What every `--cell` offers; nothing outside this module knows which cell it runs.

    Adding a cell: a class here with these methods, an entry in `make_cell`,
    and its name in config.CELLS.
    """

    hidden_size: int
    num_layers: int
    graphable: bool  # its step is plain tensor arithmetic on fixed shapes, so a CUDA graph can capture it
    precisions: tuple[str, ...]  # how its step can hold the weights (config.DECODE_PRECISIONS); fp32 first, exact

    def initial_state(self, B: int, device=None) -> State: ...

    def forward(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """e (B, T, I) -> h (B, T, H) and the state after the last step; two calls equal one over both pieces."""

    def step(self, e: torch.Tensor, state: State, precision: str = "fp32") -> tuple[torch.Tensor, State]:
        """One token: e (B, I) -> h (B, H), equal to forward over a sequence of one; its weights held in
        `precision`, one of `precisions`."""

    def read(self, e: torch.Tensor, state: State | None = None, precision: str = "fp32",
             bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, State]:
        """forward() for reading a prompt, its weights held in `precision` as `step` holds them; fp32 and bf16 are
        forward() itself (bf16 under the caller's autocast), int8 needs a sequence kernel of its own. `bounds`:
        the least and greatest value e can hold."""

    def activations(self, e: torch.Tensor) -> dict:
        """What `storyloom inspect` shows for one stream e (1, T, I): {"h": (1, T, H) outputs, "acts": (T, H) the
        unit activations to colour by, "kind": what they are, "gates": {name: (L, T, H)} or None}."""


@runtime_checkable
class Folds(Protocol):
    """An optional speed-up: a cell whose first layer is linear in its input can fold an input table (an
    embedding, a one-hot identity) into that layer, so a one-token step looks its input projection up."""

    def fold(self, table: torch.Tensor) -> torch.Tensor: ...

    def packed_layers(self) -> tuple | None:
        """The int8 step's weights as the native writing loop (native.py) takes them; None where that loop
        does not do this cell's step."""

    def read_packs(self) -> tuple[list, list]:
        """The int8 read's weights as native.py's read takes them: per layer W_ih (with two zero columns for
        `read`'s pinning constants) and W_hh, FBGEMM-packed with their biases."""

    def read_inputs(self, e: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        """Layer 0's int8 input products of rows e (N, I) -> (N, 4H), each what `read` gives that row inside any
        prompt (its pins fix the quantisation): of a lookup's every row, the native read's table."""

    def step(self, e: torch.Tensor | None, state: State, z0: torch.Tensor | None = None,
             precision: str = "fp32") -> tuple[torch.Tensor, State]: ...


class Matrix:
    """x @ W for a one-token step, with W (K, N) held in fp32 (exact), bf16 or int8.

    A step at batch 1 reads every weight once per token, so its time is the weights' bytes and the calls around
    them. int8 is FBGEMM's dynamic quantisation (`quantized::linear_dynamic`: weights int8 per output column,
    scaled by the column's largest magnitude over 127; each call quantises x on the fly, with 7-bit range so no
    CPU's 8-bit products saturate): measured 75 us at batch 1 against 202 for fp32 and 249 for bf16 at the default
    preset's recurrent shape, and fastest up to batch 32 (255 against 797 and 353; benchmarks/README.md, "Batch-1
    writing"). Its quantised-tensor constructors are deprecated in favour of torchao, whose CPU int8 kernels
    (`_weight_int8pack_mm`, `_int_mm`) measured 685 and 166 us here, so FBGEMM it is, until they catch up.
    bf16 halves the bytes and gains from batch 8 on (AMX), not at batch 1.
    """

    def __init__(self, W: torch.Tensor, precision: str):
        self.precision = precision
        if precision == "fp32":
            self.W = W  # (K, N)
        elif precision == "bf16":
            self.W = W.t().contiguous().to(torch.bfloat16)  # (N, K), as F.linear takes it
        else:
            self.W = int8_packed(W.t())

    def addmm(self, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """b + x @ W: x (B, K), b (N,) or (B, N) -> (B, N) fp32."""
        if self.precision == "fp32":
            return torch.addmm(b, x, self.W)
        if self.precision == "bf16":
            return F.linear(x.to(torch.bfloat16), self.W).float().add_(b)
        return torch.ops.quantized.linear_dynamic(x.float(), self.W, True).add_(b)  # True: 7-bit activations

    def bytes(self) -> int:
        if self.precision == "int8":
            w, _ = torch.ops.quantized.linear_unpack(self.W)
            return w.numel()
        return self.W.numel() * self.W.element_size()


def int8_packed(Wt: torch.Tensor, bias: torch.Tensor | None = None):
    """Wt (N, K) as FBGEMM's packed int8 weights: each output row scaled by its largest magnitude over 127."""
    Wt = Wt.detach().float().contiguous()
    scale = (Wt.abs().amax(1) / 127).clamp_min(1e-12).double()  # (N,)
    with warnings.catch_warnings():  # the deprecation notice of quantised tensors, said once per matrix
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(Wt, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())


def cached(module: nn.Module, name: str, build):
    """build(), kept on `module` until one of its parameters changes (in place, in dtype or in device)."""
    if "_plist" not in module.__dict__:
        module._plist = list(module.parameters())  # walking the module tree each step costs more than the step
    version = tuple((p._version, p.dtype, p.device) for p in module._plist)
    hit = module.__dict__.get(name)
    if hit is None or hit[0] != version:
        hit = (version, build())
        module.__dict__[name] = hit
    return hit[1]


class StepByForward:
    """A one-token step that is forward() over a sequence of one, and the top layer's outputs as the
    activations to inspect: for cells whose kernel needs no hand-written step and has no gates to show."""

    graphable = False
    precisions = ("fp32",)

    def step(self, e: torch.Tensor, state: State, precision: str = "fp32") -> tuple[torch.Tensor, State]:
        h, state = self.forward(e[:, None], state)  # precision: fp32 only (`precisions`), checked where it is chosen
        return h[:, 0], state

    def read(self, e: torch.Tensor, state: State | None = None, precision: str = "fp32",
             bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, State]:
        return self.forward(e, state)  # fp32, or bf16 under the caller's autocast: the precisions such a cell has

    def activations(self, e: torch.Tensor) -> dict:
        h, _ = self(e)
        return {"h": h, "acts": h[0], "kind": "hidden output h_t", "gates": None}


def init_forget_bias(lstm: nn.Module, H: int, layers: int, value: float = 1.0) -> None:
    # Gates are ordered i, f, g, o. A forget bias of 1 keeps the cell state
    # flowing early in training (Jozefowicz et al., 2015); larger values keep
    # it longer (docs/experiments.md: 3 reaches 5 times as far on recall).
    with torch.no_grad():
        for l in range(layers):
            getattr(lstm, f"bias_ih_l{l}")[H : 2 * H].fill_(value)
            getattr(lstm, f"bias_hh_l{l}")[H : 2 * H].zero_()


class LSTM(nn.LSTM):
    """The default: torch's fused kernel for sequences, a hand-written step for generation."""

    graphable = True  # step() is plain tensor arithmetic on fixed shapes: a CUDA graph can capture it
    precisions = DECODE_PRECISIONS[1:]  # all but auto

    def __init__(self, I: int, H: int, L: int, dropout: float, forget_bias: float = 1.0):
        super().__init__(I, H, L, batch_first=True, dropout=dropout if L > 1 else 0.0)
        init_forget_bias(self, H, L, forget_bias)

    def initial_state(self, B: int, device=None) -> State:
        z = torch.zeros(self.num_layers, B, self.hidden_size, device=device)
        return z, z.clone()

    def forward(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if loops_active(e):  # training inside kernels.lstm_kernel("loops"): lstm.cpp's recurrence, the same function
            h0, c0 = state if state is not None else self.initial_state(e.shape[0], e.device)
            h, hn, cn = lstm_layers(e, self.all_weights, h0, c0, self.dropout if self.training else 0.0)
            return h, (hn, cn)
        h, (hn, cn) = super().forward(e, state)  # (B, T, H)
        return h, (hn, cn)

    def read(self, e: torch.Tensor, state: State | None = None, precision: str = "fp32",
             bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, State]:
        """forward(), the weights held in `precision`. int8 runs FBGEMM's quantised LSTM (`torch.quantized_lstm`,
        weights per output row as `Matrix` holds them), one call per layer: the sequence in one native loop. A
        1,000-character prompt took 40 ms so against 87 in bf16 (AMX) and 136 stepping Matrix from Python, within
        0.0002 bpc of fp32 (benchmarks/README.md, "Batch-1 writing").

        FBGEMM quantises a layer's input over the whole call, so a text read in two calls would differ from it
        read in one (a co-writing session and the server's prompt cache read in pieces). Two constant columns with
        zero weights pin that range: `bounds`, every value e can take (model.read), and -1, 1 above layer 0
        (|h| = |o tanh(C)| <= 1). So one stream reads the same however its text is cut; streams read side by side
        share each step's recurrent quantisation, as `Matrix` steps them.
        """
        if precision != "int8":
            return self.forward(e, state)
        B, T, _ = e.shape
        h0, c0 = state if state is not None else self.initial_state(B, e.device)
        inp, hs, cs = e.float(), [], []
        for l, params in enumerate(self._int8_layers()):
            pins = inp.new_tensor(bounds if l == 0 else (-1.0, 1.0)).expand(B, T, 2)
            inp, h, c = torch.quantized_lstm(torch.cat([inp, pins], 2), (h0[l : l + 1].float(), c0[l : l + 1].float()),
                                             [params], True, 1, 0.0, False, False, True, dtype=torch.qint8, use_dynamic=True)
            hs.append(h)
            cs.append(c)
        return inp, (torch.cat(hs), torch.cat(cs))  # (B, T, H), (L, B, H) each

    def _int8_layers(self) -> list:
        """FBGEMM's cell parameters per layer for `read` in int8 (read_packs); cached until a parameter changes."""

        def build():
            # True: 7-bit activations, as Matrix quantises them (no CPU's 8-bit products saturate)
            return [torch.ops.quantized.make_quantized_cell_params_dynamic(ih, hh, b_ih, b_hh, True)
                    for ih, hh, b_ih, b_hh in self._read_packs()]

        return cached(self, "_int8_read", build)

    def _read_packs(self) -> list:
        def build():
            layers = []
            for l in range(self.num_layers):
                W_ih, W_hh = getattr(self, f"weight_ih_l{l}"), getattr(self, f"weight_hh_l{l}")
                b_ih, b_hh = getattr(self, f"bias_ih_l{l}").detach(), getattr(self, f"bias_hh_l{l}").detach()
                W_ih = F.pad(W_ih.detach(), (0, 2))  # (4H, I + 2): two zero columns for the pinning constants
                layers.append((int8_packed(W_ih, b_ih), int8_packed(W_hh, b_hh), b_ih, b_hh))
            return layers

        return cached(self, "_int8_read_packs", build)

    def read_packs(self) -> tuple[list, list]:
        """What `read` multiplies by in int8, for write.cpp's read_tokens (this class's int8 read in C++): per
        layer FBGEMM's packed W_ih with its two zero pinning columns, and W_hh, each with its bias inside."""
        packs = self._read_packs()
        return [ih for ih, _, _, _ in packs], [hh for _, hh, _, _ in packs]

    def read_inputs(self, e: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        pins = e.new_tensor(bounds, dtype=torch.float).expand(e.shape[0], 2)
        return torch.ops.quantized.linear_dynamic(torch.cat([e.float(), pins], 1), self._read_packs()[0][0], True)

    def activations(self, e: torch.Tensor) -> dict:
        """Read through the reference LSTM loaded with these weights: the fused kernel does not expose its gates."""
        ref = ReferenceLSTM(self.input_size, self.hidden_size, self.num_layers, 0.0).to(e.device)
        ref.load_state_dict(self.state_dict())
        return ref.activations(e)

    def fold(self, table: torch.Tensor) -> torch.Tensor:
        """Layer 0's input projection and biases applied to every row of an input table (V, I) -> (V, 4H)."""
        b = self.bias_ih_l0 + self.bias_hh_l0
        return torch.addmm(b, table.to(self.weight_ih_l0), self.weight_ih_l0.t())  # the table may come from the CPU

    def packed_layers(self) -> tuple:
        """What `step` multiplies by in int8 (FBGEMM's packed weights), for write.cpp, which is this class's
        int8 step written in C++: layer 0's W_hh^T (its input projection is looked up), and for each layer
        above it [W_ih | W_hh]^T with b_ih + b_hh."""
        layers = self._fused("int8")
        return layers[0][1].W, [W.W for W, _, _ in layers[1:]], [b for _, _, b in layers[1:]]

    def _fused(self, precision: str = "fp32") -> list[tuple[Matrix, Matrix | None, torch.Tensor]]:
        """Per layer [W_ih | W_hh]^T (I+H, 4H), layer 0's recurrent rows W_hh^T (H, 4H) alone (for a looked-up
        input; None above it), and b_ih + b_hh; the matrices in `precision`, cached until a parameter changes."""

        def build():
            layers = []
            for l in range(self.num_layers):
                W_ih, W_hh = getattr(self, f"weight_ih_l{l}"), getattr(self, f"weight_hh_l{l}")
                b = getattr(self, f"bias_ih_l{l}") + getattr(self, f"bias_hh_l{l}")
                W = torch.cat([W_ih, W_hh], 1).t().contiguous().detach()
                rec = Matrix(W[-self.hidden_size :], precision) if l == 0 else None
                layers.append((Matrix(W, precision), rec, b.detach()))
            return layers

        return cached(self, f"_fused_{precision}", build)

    def step(self, e: torch.Tensor | None, state: State, z0: torch.Tensor | None = None,
             precision: str = "fp32") -> tuple[torch.Tensor, State]:
        """One step, e (B, I) -> h (B, H); or z0 (B, 4H), layer 0's input gates already looked up.

        The LSTM equations over pre-fused weights: on a CPU, nn.LSTM's per-call
        setup costs far more than one step's arithmetic. `precision`: how the
        weights are held (Matrix); fp32 is exact.
        """
        h, c = state  # (L, B, H) each
        H = self.hidden_size
        inp, hs, cs = e, [], []
        for l, (W, W_hh, b) in enumerate(self._fused(precision)):
            if l == 0 and z0 is not None:
                z = W_hh.addmm(z0, h[0])  # (B, 4H): z0 holds W_ih x + b
            else:
                z = W.addmm(b, torch.cat([inp, h[l]], 1))  # (B, 4H)
            s = torch.sigmoid(z)  # i, f and o gates (the g slice is unused: one call beats three)
            g = torch.tanh(z[:, 2 * H : 3 * H])  # candidate C~_t
            c_l = torch.addcmul(s[:, H : 2 * H] * c[l], s[:, :H], g)  # C_t = f*C_{t-1} + i*C~_t
            inp = s[:, 3 * H :] * torch.tanh(c_l)  # h_t = o*tanh(C_t)
            hs.append(inp)
            cs.append(c_l)
        if len(hs) == 1:  # a view, not a copy: at batch 1 every call counts
            return inp, (inp[None], c_l[None])
        return inp, (torch.stack(hs), torch.stack(cs))


class ReferenceLSTM(StepByForward, nn.Module):
    """An LSTM written out from the seed equations, for reading and for looking inside.

    Parameters are named and laid out as torch's (gates stacked i, f, g, o),
    so `lstm` weights load as they are. With `record = True`, forward keeps
    each layer's gates and cell state in `self.gates`: {"input", "forget",
    "output", "cell"} -> (L, B, T, H).
    """

    def __init__(self, I: int, H: int, L: int, dropout: float, forget_bias: float = 1.0):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.dropout = I, H, L, dropout
        k = 1 / math.sqrt(H)  # torch's initialisation, U(-1/sqrt(H), 1/sqrt(H))
        for l in range(L):
            for name, shape in ((f"weight_ih_l{l}", (4 * H, I if l == 0 else H)), (f"weight_hh_l{l}", (4 * H, H)),
                                (f"bias_ih_l{l}", (4 * H,)), (f"bias_hh_l{l}", (4 * H,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-k, k)))
        init_forget_bias(self, H, L, forget_bias)
        self.record = False
        self.gates: dict[str, torch.Tensor] = {}

    initial_state = LSTM.initial_state  # the same (h, c) of zeros

    def activations(self, e: torch.Tensor) -> dict:
        """The cell state's tanh(C_t) of the top layer, as in Karpathy's "unreasonable effectiveness" post, and every gate."""
        self.record = True
        try:
            h, _ = self(e)
        finally:
            self.record = False
        return {"h": h, "acts": torch.tanh(self.gates["cell"][-1, 0]), "kind": "cell state tanh(C_t)",
                "gates": {k: v[:, 0] for k, v in self.gates.items()}}

    def cell(self, l: int, x: torch.Tensor, h: torch.Tensor, C: torch.Tensor):
        """One layer, one step: x (B, I), h and C (B, H) -> the gates, C_t and h_t."""
        W_ih, W_hh = getattr(self, f"weight_ih_l{l}"), getattr(self, f"weight_hh_l{l}")
        z = x @ W_ih.t() + getattr(self, f"bias_ih_l{l}") + h @ W_hh.t() + getattr(self, f"bias_hh_l{l}")  # (B, 4H)
        zi, zf, zg, zo = z.chunk(4, dim=-1)
        f = torch.sigmoid(zf)  # forget gate: how much of C_{t-1} to keep
        i = torch.sigmoid(zi)  # input gate: how much of the candidate to write
        C_tilde = torch.tanh(zg)  # candidate values
        C = f * C + i * C_tilde  # the cell state: the long-term memory
        o = torch.sigmoid(zo)  # output gate: how much of the memory to show
        h = o * torch.tanh(C)  # the hidden state: what the next layer and step see
        return (i, f, o), C, h

    def forward(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        B, T, _ = e.shape
        h0, c0 = state if state is not None else self.initial_state(B, e.device)
        hs, cs = list(h0.unbind(0)), list(c0.unbind(0))
        rec: list[list[list[torch.Tensor]]] = [[[] for _ in range(4)] for _ in range(self.num_layers)]
        outs = []
        for t in range(T):
            x = e[:, t]
            for l in range(self.num_layers):
                (i, f, o), cs[l], hs[l] = self.cell(l, x, hs[l], cs[l])
                if self.record:
                    for store, v in zip(rec[l], (i, f, o, cs[l])):
                        store.append(v.detach())
                x = hs[l]
                if l < self.num_layers - 1 and self.dropout and self.training:
                    x = F.dropout(x, self.dropout, True)
            outs.append(x)
        if self.record:
            self.gates = {name: torch.stack([torch.stack(rec[l][k], 1) for l in range(self.num_layers)])
                          for k, name in enumerate(("input", "forget", "output", "cell"))}  # (L, B, T, H)
        return torch.stack(outs, 1), (torch.stack(hs), torch.stack(cs))


class _TorchRNN(StepByForward):
    """GRU and tanh RNN: torch's kernels, the state a one-tensor tuple."""

    def initial_state(self, B: int, device=None) -> State:
        return (torch.zeros(self.num_layers, B, self.hidden_size, device=device),)

    def forward(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        h, hn = super().forward(e, state[0] if state is not None else None)  # (B, T, H)
        return h, (hn,)


class GRU(_TorchRNN, nn.GRU):
    def __init__(self, I: int, H: int, L: int, dropout: float):
        nn.GRU.__init__(self, I, H, L, batch_first=True, dropout=dropout if L > 1 else 0.0)


class RNN(_TorchRNN, nn.RNN):
    def __init__(self, I: int, H: int, L: int, dropout: float):
        nn.RNN.__init__(self, I, H, L, nonlinearity="tanh", batch_first=True, dropout=dropout if L > 1 else 0.0)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, H: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.qkv, self.proj = nn.Linear(H, 3 * H), nn.Linear(H, H)
        self.mlp = nn.Sequential(nn.Linear(H, 4 * H), nn.GELU(), nn.Linear(4 * H, H))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H); cache (B, C, 2H): keys and values of the C tokens before; bias (B, nh, T, C+T)."""
        B, T, H = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(H, -1)  # (B, T, H) each
        kv = torch.cat([cache.to(k.dtype), torch.cat([k, v], -1)], 1)  # (B, C+T, 2H)
        K, V = kv.split(H, -1)
        heads = lambda t: t.view(B, t.shape[1], self.heads, H // self.heads).transpose(1, 2)  # noqa: E731  (B, nh, S, hd)
        a = F.scaled_dot_product_attention(heads(q), heads(K), heads(V), attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, H)))
        return x + self.drop(self.mlp(self.norm2(x))), kv


class Transformer(StepByForward, nn.Module):
    """A small causal Transformer: each token attends to itself and the `context` tokens before it.

    Positions enter as ALiBi biases (Press et al., 2022): minus a per-head
    slope times the distance, so a token's output depends only on the tokens
    in its window, wherever a call starts. The state is each layer's keys and
    values for the last `context` tokens (L, B, C*2H) and which of them exist
    (1, B, C): a stream continues across calls exactly as the recurrent cells
    do, and zeroing a stream's state empties its context.
    """

    def __init__(self, I: int, H: int, L: int, dropout: float, heads: int, context: int):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.C, self.heads = I, H, L, context, heads
        self.inp = nn.Linear(I, H)
        self.blocks = nn.ModuleList(Block(H, heads, dropout) for _ in range(L))
        self.norm = nn.LayerNorm(H)
        self.register_buffer("slopes", torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)]), persistent=False)

    def initial_state(self, B: int, device=None) -> State:
        C, H, L = self.C, self.hidden_size, self.num_layers
        return torch.zeros(L, B, C * 2 * H, device=device), torch.zeros(1, B, C, device=device)

    def _bias(self, valid: torch.Tensor, T: int) -> torch.Tensor:
        """(B, nh, T, C+T): -slope * distance inside each query's window, -inf outside it or on a missing token."""
        C, dev = self.C, valid.device
        q = torch.arange(T, device=dev)[:, None] + C  # query positions in the window
        k = torch.arange(C + T, device=dev)[None]
        dist = (q - k).float()  # (T, C+T)
        inside = (dist >= 0) & (dist <= C)
        keys = torch.cat([valid, torch.ones(valid.shape[0], T, dtype=torch.bool, device=dev)], 1)  # (B, C+T)
        ok = inside[None, None] & keys[:, None, None, :]
        return torch.where(ok, -self.slopes[None, :, None, None] * dist, float("-inf"))

    def _piece(self, e: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        B, T, _ = e.shape
        C, H = self.C, self.hidden_size
        caches, valid = state[0].view(self.num_layers, B, C, 2 * H), state[1][0] > 0.5
        bias = self._bias(valid, T)
        x, new = self.inp(e), []
        for blk, cache in zip(self.blocks, caches):
            x, kv = blk(x, cache, bias)
            new.append(kv[:, -C:].float())
        keys = torch.cat([valid, torch.ones(B, T, dtype=torch.bool, device=e.device)], 1)[:, -C:]
        return self.norm(x), (torch.stack(new).view(self.num_layers, B, C * 2 * H), keys[None].float())

    def forward(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        state = state if state is not None else self.initial_state(e.shape[0], e.device)
        outs = []
        for s in range(0, e.shape[1], self.C):  # pieces of at most C tokens bound the attention's memory
            h, state = self._piece(e[:, s : s + self.C], state)
            outs.append(h)
        return torch.cat(outs, 1), state


def make_cell(cfg: ModelConfig) -> nn.Module:
    I, H, L, p = cfg.input_size, cfg.hidden, cfg.layers, cfg.dropout
    return {
        "lstm": lambda: LSTM(I, H, L, p, cfg.forget_bias),
        "lstm-reference": lambda: ReferenceLSTM(I, H, L, p, cfg.forget_bias),
        "gru": lambda: GRU(I, H, L, p),
        "rnn": lambda: RNN(I, H, L, p),
        "transformer": lambda: Transformer(I, H, L, p, cfg.heads, cfg.context),
    }[cfg.cell]()
