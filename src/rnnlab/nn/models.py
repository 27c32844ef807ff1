"""Architectures by name: a variant in params.yaml names an ``arch`` and its sizes.

    build_model(spec, n_features=14, timesteps=240) -> nn.Module mapping (B, T, F) -> (B,)

One builder per torch architecture of ``rnnlab.nn.schema.ARCHITECTURES`` (which also says
which fields each one reads): dense, gru, lstm, conv_gru (Jena); multihot_dense,
embed_rnn (IMDB). An unknown name fails with the list of known ones. Every model ends
in one linear unit: the regression output for Jena (MAE loss), the logit for binary tasks.

``init`` (``train.init``) picks the initial weights: ``keras`` (the default), Keras 3's
defaults, as the lecture's models start; ``torch``, PyTorch's layer defaults, as rnnlab
did before (``initialize`` below says what each one draws).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnlab.core.errors import RnnlabError
from rnnlab.nn.recurrent import RecurrentLayer, _use_fused, both_directions
from rnnlab.nn.schema import ARCHITECTURES, ModelSpec

__all__ = ["INITS", "REGISTRY", "ModelSpec", "build_model", "count_parameters", "initialize",
           "register"]


# train.init's choices (rnnlab.training.params.INITS names the same two; a test checks).
INITS = ("keras", "torch")

Builder = Callable[[ModelSpec, int, int], nn.Module]
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    if name not in ARCHITECTURES or not ARCHITECTURES[name].torch:
        raise ValueError(f"register {name!r} in rnnlab.nn.schema.ARCHITECTURES first (its fields)")

    def add(builder: Builder) -> Builder:
        REGISTRY[name] = builder
        return builder
    return add


def build_model(spec: ModelSpec, n_features: int, timesteps: int,
                init: str = "keras") -> nn.Module:
    """The variant's model, its weights drawn by ``init`` from torch's global generator
    (so ``torch.manual_seed`` before the call fixes them)."""
    try:
        builder = REGISTRY[spec.arch]
    except KeyError:
        raise RnnlabError(f"unknown architecture {spec.arch!r}; known: "
                          f"{', '.join(sorted(REGISTRY))}") from None
    return initialize(builder(spec, n_features, timesteps), init)


def initialize(model: nn.Module, init: str) -> nn.Module:
    """Draw ``model``'s weights again the way ``init`` says; returns ``model``.

    ``torch``: leaves PyTorch's defaults as the layers drew them (Linear and Conv1d
    Kaiming-uniform with uniform biases, recurrent layers uniform in +-1/sqrt(H)).
    ``keras``: Keras 3's defaults, layer by layer in module order:

    - Linear, Conv1d: Glorot-uniform kernel, limit sqrt(6 / (fan_in + fan_out)) with the
      kernel width counted in both fans for a convolution (``nn.init.xavier_uniform_`` on
      torch's (out, in[, k]) layout computes the same fans); zero bias.
    - recurrent layers: the input kernel Glorot-uniform over the whole (I, G*H) matrix of
      all G gates, as Keras' ``kernel``; the recurrent kernel orthogonal over the whole
      (H, G*H) matrix, as Keras' ``Orthogonal`` draws ``recurrent_kernel``: its H rows are
      orthonormal (torch's (G*H, H) layout: orthonormal columns), which makes each gate's
      H x H block orthogonal only when G = 1 (SimpleRNN); zero biases, except an LSTM's
      forget gate, whose Keras bias starts at 1 (``unit_forget_bias``): ``bias_ih`` gets
      the 1 and ``bias_hh`` 0, as the two are added.
    - Embedding: uniform in +-0.05 under both choices (the builder draws it).

    The draw runs on one thread: LAPACK's QR (the orthogonal kernels) rounds differently
    with two threads than with one, so a queue worker (OMP_NUM_THREADS=1) started a GRU
    from other weights than ``dvc repro`` with the same seed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _initialize(model, init)
    finally:
        torch.set_num_threads(threads)


def _initialize(model: nn.Module, init: str) -> nn.Module:
    if init not in INITS:
        raise RnnlabError(f"init {init!r}: choose one of {', '.join(INITS)}")
    if init == "torch":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(module.weight)
            assert module.bias is not None      # every such layer here has a bias
            nn.init.zeros_(module.bias)
        elif isinstance(module, RecurrentLayer):
            with torch.no_grad():
                nn.init.xavier_uniform_(module.weight_ih_l0)        # (G*H, I)
                nn.init.orthogonal_(module.weight_hh_l0)            # (G*H, H)
                module.bias_ih_l0.zero_()
                module.bias_hh_l0.zero_()
                if module.cell == "lstm":                           # gates i, f, g, o
                    hidden = module.hidden_size
                    module.bias_ih_l0[hidden:2 * hidden] = 1.0
        elif not isinstance(module, nn.Embedding) and next(module.parameters(recurse=False),
                                                               None) is not None:
            # a new layer type must say how Keras starts it, not keep torch's silently
            raise RnnlabError(f"initialize: no Keras initializer for {type(module).__name__}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Recurrent(nn.Module):
    """One recurrent layer, (B, T, I) -> (B, D*H) or (B, T, D*H) with D = 1 or 2: a
    ``RecurrentLayer`` per direction (the backward one reads the sequence reversed)."""

    def __init__(self, cell: str, input_size: int, hidden: int, *, dropout: float,
                 recurrent_dropout: float, activation: str, bidirectional: bool,
                 return_sequences: bool):
        super().__init__()
        if cell == "lstm" and activation != "tanh":
            raise RnnlabError("an lstm layer is tanh only; use a gru for relu")
        self.return_sequences = return_sequences
        make = lambda: RecurrentLayer(cell, input_size, hidden, dropout=dropout,  # noqa: E731
                                      recurrent_dropout=recurrent_dropout,
                                      activation=activation, return_sequences=return_sequences)
        self.forward_rnn = make()
        self.backward_rnn = make() if bidirectional else None

    def forward(self, x: Tensor) -> Tensor:
        if self.backward_rnn is not None:
            both = both_directions(self.forward_rnn, self.backward_rnn, x)   # one launch
            if both is not None:
                return self._join(*both)
        return self._join(self.forward_rnn(x),
                          None if self.backward_rnn is None else self.backward_rnn(x.flip(1)))

    def forward_ids(self, ids: Tensor, table: Tensor) -> Tensor:
        """``self(embedding(ids))``, each direction projecting the table once
        (``RecurrentLayer.forward_ids``; off the C++ path, the embedding route, where a
        bidirectional layer's directions share one launch)."""
        if self.forward_rnn.path(table, False) != "cpp":
            return self(torch.nn.functional.embedding(ids, table))
        return self._join(self.forward_rnn.forward_ids(ids, table),
                          None if self.backward_rnn is None
                          else self.backward_rnn.forward_ids(ids.flip(1), table))

    def _join(self, out: Tensor, back: Tensor | None) -> Tensor:
        if back is None:
            return out
        if self.return_sequences:
            back = back.flip(1)                           # align with forward time
        return torch.cat([out, back], -1)


def _recurrent_stack(spec: ModelSpec, cell: str, input_size: int) -> tuple[nn.Sequential, int]:
    activations = spec.activations or ("tanh",) * len(spec.units)
    layers, size = [], input_size
    for i, (units, activation) in enumerate(zip(spec.units, activations)):
        last = i == len(spec.units) - 1
        layers.append(Recurrent(cell, size, units, dropout=spec.dropout,
                                recurrent_dropout=spec.recurrent_dropout,
                                activation=activation, bidirectional=spec.bidirectional,
                                return_sequences=not last))
        size = units * (2 if spec.bidirectional else 1)
    return nn.Sequential(*layers), size


class Head(nn.Module):
    """body -> Linear(size, 1) -> (B,)."""

    def __init__(self, body: nn.Module, size: int):
        super().__init__()
        self.body = body
        self.out = nn.Linear(size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x)).squeeze(-1)


class DenseLinear(nn.Linear):
    """``nn.Linear`` (the same parameters and state_dict) whose product, on 2-D float CPU
    inputs with the C++ extension, is ``fused.dense``: the dense model's (128 x 3,360) by
    (3,360 x 32) layer, forward and weight gradient."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.dtype != self.weight.dtype or not _use_fused(x):
            return super().forward(x)
        from rnnlab.nn import fused
        return fused.dense(x, self.weight, self.bias)


@register("dense")
def build_dense(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    """The lecture's densely connected baseline: Flatten -> Dense(units) relu -> Dense 1."""
    layers: list[nn.Module] = [nn.Flatten()]
    size = n_features * timesteps
    for units in spec.units:
        layers += [DenseLinear(size, units), nn.ReLU()]
        size = units
    return Head(nn.Sequential(*layers), size)


@register("gru")
def build_gru(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    body, size = _recurrent_stack(spec, "gru", n_features)
    return Head(body, size)


@register("lstm")
def build_lstm(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    body, size = _recurrent_stack(spec, "lstm", n_features)
    return Head(body, size)


class ConvFront(nn.Module):
    """Conv1D(k) relu -> MaxPool -> Conv1D(k) relu over time, (B, T, F) -> (B, T', C)."""

    def __init__(self, n_features: int, filters: int, kernel: int, pool: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_features, filters, kernel), nn.ReLU(), nn.MaxPool1d(pool),
            nn.Conv1d(filters, filters, kernel), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        conv1, relu1, pool, conv2, relu2 = self.net
        assert isinstance(pool, nn.MaxPool1d)
        assert isinstance(conv1, nn.Conv1d) and isinstance(conv2, nn.Conv1d)
        size = int(pool.kernel_size) if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        if _use_fused(x):
            # Both convolutions, their ReLUs and the pool in the C++ kernels, in their
            # feature-major layout (F, T, Bp): one transposing copy of x in, and the
            # output is already the GRU layer's input layout (a (B, T, C) view of it).
            from rnnlab.nn import fused
            batch = x.size(0)
            xf = fused.pad_lanes(x.permute(2, 1, 0)).contiguous()
            h = fused.conv_relu_pool(xf, conv1.weight, conv1.bias, size)
            h = fused.conv_relu_pool(h, conv2.weight, conv2.bias, 1)
            return h[..., :batch].permute(2, 1, 0)                        # (B, T, C)
        # Conv1d wants (B, C, T), contiguous: made once here, or its forward and its
        # backward would each copy the transposed view.
        h = relu1(conv1(x.transpose(1, 2).contiguous()))
        # MaxPool1d (floor mode, stride = size) as a max over a reshape: PyTorch's CPU
        # max_pool1d takes its 2-D path with indices, slower than this.
        n = h.size(-1) // size
        h = h[..., :n * size].reshape(*h.shape[:-1], n, size).max(-1).values
        # The last ReLU in the (C, T, B) layout the C++ recurrences read: the layer then
        # takes it without a copy, and the ReLU's backward meets the layer's gradient in
        # its own layout (on strided views it cost 0.5 ms of the step).
        return relu2(conv2(h).permute(1, 2, 0).contiguous()).permute(2, 1, 0)   # (B, T, C)


@register("conv_gru")
def build_conv_gru(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    """The lecture's "combining CNNs and RNNs": a 1D convnet shortens the sequence for a GRU."""
    remaining = (timesteps - spec.conv_kernel + 1) // spec.pool_size - spec.conv_kernel + 1
    if remaining < 1:
        k, p = spec.conv_kernel, spec.pool_size
        raise RnnlabError(
            f"conv_gru: {timesteps} time steps (lookback / step) are too few for two "
            f"kernels of {k} and pooling by {p}: it needs at least {k * p + k - 1}; raise "
            "the variant's lookback (models.<variant>.lookback, else jena.lookback), lower "
            "its step, or lower conv_kernel or pool_size")
    front = ConvFront(n_features, spec.conv_filters, spec.conv_kernel, spec.pool_size)
    body, size = _recurrent_stack(spec, "gru", spec.conv_filters)
    return Head(nn.Sequential(front, body), size)


class MultiHot(nn.Module):
    """(B, L) word ids -> (B, V) 0/1 vector of the words present; padding dropped."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids: Tensor) -> Tensor:
        hot = torch.zeros(ids.size(0), self.vocab_size, device=ids.device)
        hot.scatter_(1, ids, 1.0)
        hot[:, 0] = 0.0                                     # id 0 is padding
        return hot


class MultiHotDense(nn.Sequential):
    """MultiHot, then Linear/ReLU pairs. On the CPU with the C++ extension the multi-hot
    vector and the first Linear are one sparse pass (``fused.multihot_linear``): the same
    function, without the (B, vocab) matrix."""

    def forward(self, ids: Tensor) -> Tensor:
        first = self[1] if len(self) > 1 else None
        if not isinstance(first, nn.Linear) or not _use_fused(first.weight):
            return super().forward(ids)
        rest = list(self)[2:]
        from rnnlab.nn import fused
        h = fused.multihot_linear(ids, first.weight, first.bias)
        for module in rest:
            h = module(h)
        return h


@register("multihot_dense")
def build_multihot_dense(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    """The lecture's IMDB baseline: multi-hot words -> Dense 16 relu -> Dense 16 relu -> 1."""
    layers: list[nn.Module] = [MultiHot(n_features)]
    size = n_features
    for units in spec.units:
        layers += [nn.Linear(size, units), nn.ReLU()]
        size = units
    return Head(MultiHotDense(*layers), size)


@register("embed_rnn")
def build_embed_rnn(spec: ModelSpec, n_features: int, timesteps: int) -> nn.Module:
    """Embedding(vocab, dim) -> recurrent stack (``cell``) -> logit; ``n_features`` = vocab."""
    body, size = _recurrent_stack(spec, spec.cell, spec.embedding_dim)
    embedding = nn.Embedding(n_features, spec.embedding_dim)
    # Keras' Embedding starts uniform in +-0.05; PyTorch's N(0, 1) is 20x larger and, with
    # RMSprop's small steps, learned far slower here (val accuracy after 2 epochs of the
    # LSTM on the real reviews: 0.83 with N(0, 1), 0.89 with +-0.05).
    nn.init.uniform_(embedding.weight, -0.05, 0.05)
    return Head(Embedded(embedding, body), size)


class Embedded(nn.Sequential):
    """Embedding -> recurrent stack, as ``nn.Sequential(embedding, body)`` (the same
    parameter names); the first recurrent layer reads the token ids and the embedding
    table itself (``Recurrent.forward_ids``)."""

    def forward(self, ids: Tensor) -> Tensor:
        embedding, body = self[0], self[1]
        if (embedding.padding_idx is not None or embedding.max_norm is not None
                or embedding.sparse or embedding._forward_hooks or embedding._forward_pre_hooks):
            return body(embedding(ids))     # what the table route does not reproduce
        layers = iter(body)
        out = next(layers).forward_ids(ids, embedding.weight)
        for layer in layers:
            out = layer(out)
        return out
