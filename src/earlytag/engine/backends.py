"""Layer backends: what computes a layer step and an exit head, while the exit loop (policy, packing, refill)
stays in :class:`~earlytag.engine.runner.Engine`.

The engine's own torch code is the default backend. :class:`OnnxLayers` runs every layer's step and every exit
head as ONNX Runtime sessions with dynamic shapes, in float32 or with dynamic int8 (per-channel weights), exported
once per model and cached. One layer is three small graphs:

- ``dense``: ``h (b, T, d), bias (b, 1|H, T, T) -> (b, T, d)``, every row;
- ``packed`` (kv=keep): ``x (N_a, d)`` the active rows, ``h (b, T, d)`` every token of the live sentences (keys
  and values, halted ones included), ``slot (N_a,)`` each active row's place in the ``(b, Ta)`` query padding,
  ``bias (b, 1|H, Ta, T)`` -> ``(N_a, d)``;
- ``head``: ``h (N_w, d) -> score, label, uncertainty`` (float32, the engine's :func:`head_scores`).

A single sentence (batch size 1, the latency case) does not need the host loop between layers at all: the whole
token-exit climb of one sentence is one graph — embeddings, every layer's packed step, every exit head, the window
rule — so one session call tags the sentence (``climb.onnx``; see :meth:`OnnxLayers.climb` for the policies it
covers). Its layers after the first sit in nested ``If`` branches (:func:`branching_climb`), so the layers above a
sentence's last halted word do not run; :class:`_Climb`, every layer unrolled (a layer with no active token left
runs on empty matrices), is the option ``OnnxLayers.branching = False``. Full depth and static truncation take
:class:`_Truncated`, a plain graph of that depth.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..defaults import ONNX_PRECISIONS
from ..errors import ConfigError
from ..model.layers import attend, dense_layer, finish
from ..model.precision import INT8_ROLES, quantized_roles
from ..peers import export_onnx, ort_session, quantize_onnx
from .plan import sentence_counts
from .policies import MAX_WINDOW, ExitPolicy, head_scores

if TYPE_CHECKING:
    import onnx

GRAPHS_VERSION = "v10"  # part of the cache key: bump it when the code of an exported graph changes


class _LayerGraph(nn.Module):
    """One layer's modules (registered, so the exporter finds their weights) and its head count."""

    def __init__(self, parts, heads: int):
        super().__init__()
        self.parts, self.heads = parts, heads
        self._mods = nn.ModuleList([parts.query, parts.key, parts.value, parts.attn_out, parts.attn_norm,
                                    parts.ffn_in, parts.ffn_out, parts.ffn_norm])


class _Dense(_LayerGraph):
    def forward(self, h, bias):
        return dense_layer(self.parts, h, bias, self.heads)


class _Packed(_LayerGraph):
    def forward(self, x, h, slot, bias):
        p = self.parts
        b, t, d = h.shape
        ta = bias.shape[2]
        q = p.query(x)  # (N_a, da)
        k, v = p.key(h), p.value(h)  # (b, T, da): halted tokens are keys too
        da = q.shape[-1]
        index = slot.unsqueeze(1).expand(-1, da)
        qpad = torch.zeros(b * ta, da, dtype=x.dtype).scatter(0, index, q).view(b, ta, da)
        ctx = attend(qpad, k, v, bias, self.heads).reshape(b * ta, da).gather(0, index)  # (N_a, da)
        return finish(p, ctx, x)


class _Head(nn.Module):
    def __init__(self, linear: nn.Linear, criterion: str):
        super().__init__()
        self.linear, self.criterion = linear, criterion

    def forward(self, h):
        score, pred, unc = head_scores(self.linear(h), self.criterion)
        return score, pred, unc


def _attend_rows(q, k, v, bias, heads: int, dh: int):
    """Attention of ``q (N_q, da)`` over ``k, v (N_k, da)`` plus ``bias (heads, N_q, N_k)`` -> ``(N_q, da)``, with
    every reshape written so that zero rows export and run (a sentence whose words have all halted). ``heads`` and
    ``dh`` are Python ints, not read from a tensor's shape: the exported reshapes then take constant shapes instead
    of a chain of shape arithmetic per call."""
    q, k, v = (x.reshape(-1, heads, dh).transpose(0, 1) for x in (q, k, v))  # (heads, N, dh)
    scores = torch.matmul(q, k.transpose(1, 2)) * (dh ** -0.5)  # (heads, N_q, N_k)
    if bias is not None:
        scores = scores + bias
    return torch.matmul(scores.softmax(-1), v).transpose(0, 1).reshape(-1, heads * dh)


class _PutRows(torch.autograd.Function):
    """``h (T, d)`` with the rows at ``rows (N, 1)`` replaced by ``new (N, d)``: ``index_put``, exported as the one
    ``ScatterND`` node it is (the exporter writes ``index_put`` as seven nodes that rebuild the index shape)."""

    @staticmethod
    def forward(ctx, h, rows, new):
        return h.index_put((rows[:, 0],), new)

    @staticmethod
    def symbolic(g, h, rows, new):
        return g.op("ScatterND", h, rows, new)


def _climb_head(logits, num_labels: int):
    """:func:`~earlytag.engine.policies.head_scores` (entropy) of ``logits (W, C)`` in the batch-1 graphs, in fewer
    nodes: the probabilities once, their max the score, and no guard for a label of probability 0 (log-probability
    -inf), which a float32 head's finite logits never give (a probability that underflows to 0 adds 0·log p = 0)
    -> ``score, pred, unc (W,)``; the same values to rounding (scripts/climb_ab.py)."""
    p = logits.softmax(-1)  # (W, C)
    unc = (p * logits.log_softmax(-1)).sum(-1) * (-1.0 / math.log(num_labels)) if num_labels > 1 else p[:, 0] * 0
    return p.amax(-1), logits.argmax(-1), unc


def _climb_start(m, input_ids, token_word, word_pos, window):
    """What every layer of one sentence's climb reads and nothing changes: ``h (T, d)`` the embeddings,
    ``is_word``/``tw (T,)`` which tokens are sub-words and of which word, ``band (W, W)`` each word's window,
    ``pos (heads, T, T)`` the encoder's position bias (or None); and the state before layer 0."""
    h = m.embed(input_ids)[0]  # (T, d)
    pos = m.adapter.traced_position_bias(h[None])  # (heads, T, T) or None, computed in the graph
    is_word = token_word >= 0  # (T,)
    tw = token_word.clamp(min=0)
    active = torch.ones_like(word_pos, dtype=torch.bool)  # (W,)
    idx = active.long().cumsum(0)  # (W,) 1..W
    band = (idx[:, None] - idx[None, :]).abs() <= window  # (W, W) j's window
    unc = torch.zeros_like(word_pos, dtype=torch.float32)
    state = (h, active, unc, torch.zeros_like(unc), torch.zeros_like(word_pos),
             torch.full_like(word_pos, len(m.adapter.layers) - 1))  # h, active, unc, score, pred, exit
    return state, (is_word, tw, band, pos)


def _climb_layer(m, layer: int, state, consts, word_pos, taus, maxprob, live):
    """One layer of one sentence's climb -> the next state (``h, active, unc, score, pred, exit``). ``live`` is
    whether any word is still active (a tensor), or None where the caller only runs the layer when one is: then
    every token is a key and [CLS]/[SEP] are active without a test."""
    h, active, unc, score, pred, exit_layer = state
    is_word, tw, band, pos = consts
    parts = m.adapter.layers[layer]
    if live is None:
        active_t = active.index_select(0, tw) | ~is_word  # (T,) a sub-word: its word's state; [CLS]/[SEP]: active
    else:
        active_t = (is_word & active.index_select(0, tw)) | (~is_word & live)  # (T,) (no bool Where in ORT)
    rows = active_t.nonzero()  # (N_a, 1)
    flat = rows[:, 0]  # (N_a,)
    x = h.index_select(0, flat)  # (N_a, d)
    if live is None:
        hk = h  # (T, d): halted tokens are keys too
    else:
        keys = torch.ones_like(is_word).logical_and(live).nonzero()[:, 0]  # every token while live, then none
        hk = h.index_select(0, keys)  # (N_k, d)
    bias = None
    if pos is not None:
        p = pos if parts.head_index is None else pos.index_select(0, parts.head_index)
        bias = p.index_select(1, flat) if live is None else p.index_select(1, flat).index_select(2, keys)
    ctx = _attend_rows(parts.query(x), parts.key(hk), parts.value(hk), bias, parts.num_heads,
                       parts.attn_size // parts.num_heads)  # (N_a, da)
    h = _PutRows.apply(h, rows, finish(parts, ctx, x))  # (T, d): halted rows unchanged
    s, p_, u = _climb_head(m.heads[layer].linear(h.index_select(0, word_pos)), m.config.num_labels)  # (W,) each
    u = torch.where(maxprob, 1.0 - s, u)
    unc = torch.where(active, u, unc)  # halted words keep the uncertainty they halted with
    pred = torch.where(active, p_, pred)
    score = torch.where(active, s, score)
    if layer < len(m.adapter.layers) - 1:
        halt = active & (torch.where(band, unc, 0.0).amax(1) < taus[layer])  # (W,) unc broadcast over j's row
        exit_layer = torch.where(halt, layer, exit_layer)
        active = active ^ halt  # halt ⊆ active: one Xor node
    return h, active, unc, score, pred, exit_layer


class _Climb(nn.Module):
    """The token-exit climb of one sentence, every layer unrolled (halted words frozen, kv=keep).

    ``input_ids (1, T)``, ``token_word (T,)`` (-1 on special tokens), ``word_pos (W,)``, ``taus (L,)`` (a word halts
    after layer l when the max uncertainty over its window is below ``taus[l]``; the last layer halts everyone),
    ``window ()`` (k, int64), ``maxprob ()`` (bool: 1 - max probability instead of the normalised entropy)
    -> ``pred (W,)``, ``score (W,)``, ``exit (W,)``, ``counts`` (the sentence's statistics,
    :func:`~earlytag.engine.plan.sentence_counts`). The same arithmetic as the engine's packed step for one
    sentence (``Engine._packed_step``, ``b == 1``) and its frozen window rule (``TokenExit.halt``). Every layer
    runs, on zero rows once every word has halted; :func:`branching_climb` builds the graph that stops there."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_word, word_pos, taus, window, maxprob):
        m = self.model
        state, consts = _climb_start(m, input_ids, token_word, word_pos, window)
        for layer in range(len(m.adapter.layers)):
            state = _climb_layer(m, layer, state, consts, word_pos, taus, maxprob, state[1].any())
        _, _, _, score, pred, exit_layer = state
        return pred, score, exit_layer, _counts(m, exit_layer, token_word, len(m.adapter.layers), True)


# The pieces :func:`branching_climb` joins: the names of their inputs and outputs are the joints.
CLIMB_INPUTS = ["input_ids", "token_word", "word_pos", "taus", "window", "maxprob"]
_STATE = ["h", "active", "unc", "score", "pred", "exit"]
_CONSTS = ["is_word", "tw", "band", "pos"]


class _ClimbFirst(nn.Module):
    """Embeddings and layer 0 of one sentence's climb -> the state after it, ``live`` (a word still climbs) and
    what later layers read (``is_word, tw, band`` and ``pos`` where the encoder has a position bias)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_word, word_pos, taus, window, maxprob):
        state, consts = _climb_start(self.model, input_ids, token_word, word_pos, window)
        state = _climb_layer(self.model, 0, state, consts, word_pos, taus, maxprob, None)  # [CLS] makes it live
        return (*state, state[1].any(), *(c for c in consts if c is not None))


class _ClimbNext(nn.Module):
    """Layer ``layer`` > 0 of one sentence's climb, run only while a word climbs: state in, state and ``live``
    out."""

    def __init__(self, model, layer: int):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, h, active, unc, score, pred, exit_layer, is_word, tw, band, word_pos, taus, maxprob, pos=None):
        state = _climb_layer(self.model, self.layer, (h, active, unc, score, pred, exit_layer),
                             (is_word, tw, band, pos), word_pos, taus, maxprob, None)
        return (*state, state[1].any())


class _ClimbCounts(nn.Module):
    """The climbed sentence's statistics from its words' exit layers (:func:`_counts`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, exit_layer, token_word):
        return _counts(self.model, exit_layer, token_word, len(self.model.adapter.layers), True)


def branching_climb(first: onnx.ModelProto, nexts: list[onnx.ModelProto],
                    counts: onnx.ModelProto) -> onnx.ModelProto:
    """One graph from the climb's pieces (ONNX models: :class:`_ClimbFirst`, one :class:`_ClimbNext` per later
    layer, :class:`_ClimbCounts`), each exported (and quantized) alone: layer l + 1 sits in the ``then`` branch
    of an ``If`` on layer l's ``live``, so once every word has halted no later layer runs at all — neither its
    products (zero rows already cost little) nor its few dozen other nodes, each a fixed cost per call that
    is most of an empty layer's time at batch size 1 (docs/results.md section 4). The ``else`` branch hands the
    words' labels, scores and exit layers on unchanged. The same outputs as :class:`_Climb` (tested)."""
    from onnx import TensorProto, helper

    def inline(model, prefix: str, feeds: dict[str, str]):
        """The piece's nodes, its inputs fed from ``feeds`` (outer names), everything else renamed under
        ``prefix`` -> nodes, initializers, {output name: its new name}."""
        g = model.graph
        inputs = {i.name for i in g.input}

        def name(x: str) -> str:
            return x if not x else feeds[x] if x in inputs else prefix + x
        nodes = []
        for n in g.node:
            n2 = helper.make_node(n.op_type, [name(x) for x in n.input], [name(x) for x in n.output],
                                  name=prefix + n.name, domain=n.domain or None)
            n2.attribute.extend(n.attribute)
            nodes.append(n2)
        inits = []
        for t in g.initializer:
            t2 = type(t)()
            t2.CopyFrom(t)
            t2.name = prefix + t.name
            inits.append(t2)
        return nodes, inits, {o.name: prefix + o.name for o in g.output}

    kinds = {"pred": TensorProto.INT64, "score": TensorProto.FLOAT, "exit": TensorProto.INT64}
    result = list(kinds)

    def values(names: list[str]) -> list:  # names of (pred, score, exit)
        return [helper.make_tensor_value_info(n, kinds[k], None) for n, k in zip(names, result)]

    def passthrough(state: dict[str, str], prefix: str):
        outs = [f"{prefix}{k}" for k in result]
        nodes = [helper.make_node("Identity", [state[k]], [o], name=o) for k, o in zip(result, outs)]
        return helper.make_graph(nodes, prefix.rstrip("/"), [], values(outs))

    def state_of(piece, out: dict[str, str]) -> dict[str, str]:  # a piece's outputs by what they are
        return dict(zip(_STATE + ["live"], (out[o.name] for o in piece.graph.output)))

    outer = {n: n for n in CLIMB_INPUTS}
    nodes, inits, out = inline(first, "l0/", outer)
    consts = dict(zip(_CONSTS, (out[o.name] for o in first.graph.output[len(_STATE) + 1:])))

    def layer(j: int, state: dict[str, str]):
        """Layer j (≥ 1) inlined, fed the state after layer j - 1, and what runs after it -> its nodes and
        initializers, the names of (pred, score, exit) at the end."""
        piece = nexts[j - 1]
        nodes, inits, out = inline(piece, f"l{j}/", {**outer, **consts, **state, "exit_layer": state["exit"]})
        after_nodes, outs = after(j, state_of(piece, out))
        return nodes + after_nodes, inits, outs

    def after(i: int, state: dict[str, str]):
        """What follows layer i: an If on its ``live`` whose ``then`` branch holds layer i + 1 (and, nested,
        every layer after it), whose ``else`` branch hands the state's labels on; nothing after the last layer."""
        if i == len(nexts):
            return [], [state[k] for k in result]
        then_nodes, then_inits, then_out = layer(i + 1, state)
        then = helper.make_graph(then_nodes, f"then{i + 1}", [], values(then_out), initializer=then_inits)
        outs = [f"r{i + 1}/{k}" for k in result]
        return [helper.make_node("If", [state["live"]], outs, name=f"if{i + 1}", then_branch=then,
                                 else_branch=passthrough(state, f"else{i + 1}/"))], outs

    after_nodes, final = after(0, state_of(first, out))
    nodes += after_nodes
    count_nodes, count_inits, count_out = inline(counts, "counts/", {"exit_layer": final[2], "token_word": "token_word"})
    nodes += count_nodes
    ends = [*final, count_out[counts.graph.output[0].name]]
    nodes += [helper.make_node("Identity", [x], [k], name=f"out/{k}") for x, k in zip(ends, result + ["counts"])]
    graph = helper.make_graph(nodes, "climb", list(first.graph.input), values(result) + list(counts.graph.output),
                              initializer=inits + count_inits)
    opsets = {}
    for m in (first, *nexts, counts):
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = first.ir_version
    return model


INLINE_BYTES = 1 << 30  # a joined graph with more weight bytes keeps them in a side file (protobuf's 2 GB limit)


def save_graph(model: onnx.ModelProto, path: Path) -> Path:
    """Write a joined graph under a temporary name, then rename it; weights beyond :data:`INLINE_BYTES` (a large
    encoder's) go to ``<name>.data`` beside it, which ONNX Runtime reads from there."""
    import onnx

    def weight_bytes(graph) -> int:  # the If branches' too
        return sum(len(t.raw_data) for t in graph.initializer) + sum(
            weight_bytes(a.g) for n in graph.node for a in n.attribute if a.HasField("g"))

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.onnx")
    if weight_bytes(model.graph) > INLINE_BYTES:
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")  # written first, under its final name: the graph names it
    else:
        onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


class _Truncated(nn.Module):
    """One sentence through the first ``depth`` layers, every token of every layer (no exit rule to apply: the
    none and static policies), and that layer's exit head on each word: ``input_ids (1, T), word_pos (W,) ->
    pred (W,), score (W,), counts``. The arithmetic of a full-depth export of the model (and the sentence's
    statistics, a few small nodes), written for one sentence: rows ``(T, d)`` with no padding mask, and reshapes
    of constant shape (:func:`_attend_rows`), so that ONNX Runtime fuses each projection with its bias into one
    Gemm and runs no shape arithmetic (205 nodes after its optimisation on a 6-layer BERT, against 321 for the
    batched export ``FullDepth`` of the ort-fp32 peer)."""

    def __init__(self, model, depth: int):
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, input_ids, word_pos):
        m = self.model
        h = m.embed(input_ids)[0]  # (T, d): one sentence, no padding, no mask
        pos = m.adapter.traced_position_bias(h[None])  # (heads, T, T) or None
        for parts in m.adapter.layers[: self.depth]:
            bias = None
            if pos is not None:
                bias = pos if parts.head_index is None else pos.index_select(0, parts.head_index)
            ctx = _attend_rows(parts.query(h), parts.key(h), parts.value(h), bias, parts.num_heads,
                               parts.attn_size // parts.num_heads)  # (T, da)
            h = finish(parts, ctx, h)  # (T, d)
        score, pred, _ = _climb_head(m.heads[self.depth - 1].linear(h.index_select(0, word_pos)), m.config.num_labels)
        everyone = torch.full_like(input_ids[0], -1)  # (T,) every token computed up to the last layer, as [CLS] is
        return pred, score, _counts(m, torch.full_like(word_pos, self.depth - 1), everyone, self.depth, False)


def _counts(model, exit_layer, token_word, layers: int, heads_every_layer: bool):
    """The sentence's statistics in the graph (:func:`~earlytag.engine.plan.sentence_counts`)."""
    a = model.adapter
    return sentence_counts(exit_layer, token_word, layers, a.hidden_size, a.attn_sizes, a.ffn_sizes,
                           model.config.num_labels, heads_every_layer)


def _model_key(model, precision: str) -> str:
    """Identifies the exported graphs: the weights' bytes (hashed), the config, the precision, the exporter."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes()[:4096])
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(float(t.float().sum())).encode())
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{precision} {torch.__version__} {GRAPHS_VERSION}".encode())
    return digest.hexdigest()[:16]


def _matmuls_of(path: Path, linears: list[nn.Linear]) -> list[str]:
    """Names of the MatMul/Gemm nodes of a graph whose weight is one of ``linears`` (found by value, as stored or
    transposed): the ones to keep float32 when the rest is quantised."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 2}
    wanted = [lin.weight.detach().float().numpy() for lin in linears]

    def matches(array: np.ndarray) -> bool:
        return any((w.shape == array.shape and np.array_equal(w, array))
                   or (w.T.shape == array.shape and np.array_equal(w.T, array)) for w in wanted)

    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
             and n.input[1] in weights and matches(weights[n.input[1]])]
    return names + [f"{n}_MatMul" for n in names]  # the quantiser renames a Gemm it turns into MatMul + Add


def quantize_graph(model, src: Path, dst: Path, keep: list[nn.Linear] = ()) -> Path:
    """Dynamic int8 of a graph exported from ``model``: every matrix product but the exit heads' (float32 always)
    and those of ``keep``."""
    return quantize_onnx(src, dst, keep_float=_matmuls_of(src, [head.linear for head in model.heads] + list(keep)))


class OnnxLayers:
    """Every layer step and exit head of a model as ONNX Runtime sessions (fp32 or int8), and the whole climb of
    one sentence (:meth:`climb`). Each graph is exported and its session opened when it is first needed, and
    cached on disk under a key of the weights: the model must not change while this object runs it."""

    def __init__(self, model, precision: str = "fp32", cache: str | os.PathLike | None = None,
                 threads: int | None = None):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("backend", "the onnxruntime backend needs onnxruntime and onnx: pip install "
                                         "'earlytag[onnx]'") from None
        if precision not in ONNX_PRECISIONS:
            raise ConfigError("precision", f"the onnxruntime backend runs {', '.join(ONNX_PRECISIONS[:-1])} or "
                                           f"{ONNX_PRECISIONS[-1]}, not {precision}; use --backend torch for bf16/fp16")
        from ..data.datasets import cache_dir

        self.model = model
        self.precision = precision
        self.num_heads = model.adapter.num_heads
        self.root = Path(cache or cache_dir() / "onnx") / _model_key(model, precision)
        self.threads = threads
        self.sessions: dict = {}
        self._export_lock = threading.Lock()
        self.whole_sentence = True  # a one-sentence batch climbs in one call (climb.onnx); False: layer by layer
        self.branching = True  # that call stops once every word has halted (branching_climb); False: every layer

    def _session(self, key, name: str, build, open_graph=None):
        """The session of graph ``name``, opened once by ``open_graph(name, build)`` (default :meth:`_open`)."""
        session = self.sessions.get(key)
        if session is not None:
            return session
        with self._export_lock:  # two threads tagging at once export a graph once (its temporary name is per process)
            if key not in self.sessions:
                self.sessions[key] = (open_graph or self._open)(name, build)
        return self.sessions[key]

    def _open(self, name: str, build):
        return ort_session(self._graph(name, build), self.threads)

    def _open_joined(self, name: str, build):
        """A graph joined from pieces exported (and quantized) one by one: ``build() ->`` the joined model, saved
        once per precision (``climb.onnx``, ``climb-int8.onnx``, ...)."""
        path = self.root / (f"{name}.onnx" if self.precision == "fp32" else f"{name}-{self.precision}.onnx")
        if not path.is_file():
            save_graph(build(), path)
        return ort_session(path, self.threads)

    def _graph(self, name: str, build) -> Path:
        """The file of graph ``name``: exported by ``build() -> (module, args, inputs, outputs, dynamic axes)`` the
        first time (written to a temporary name, then renamed), int8-quantized where the precision asks (exit
        heads stay float32)."""
        path = self.root / f"{name}.onnx"
        if not path.is_file():
            module, args, inputs, outputs, dynamic = build()
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.onnx")
            export_onnx(module.eval(), args, tmp, inputs, outputs, dynamic)
            os.replace(tmp, path)
        if self.precision != "fp32" and not name.startswith(("head", "climb-counts")):  # nothing to quantize there
            qpath = path.with_name(f"{name}-{self.precision}.onnx")
            if not qpath.is_file():
                tmp = qpath.with_name(f".{qpath.name}.tmp-{os.getpid()}.onnx")
                layers = zip(self.model.adapter.layers, quantized_roles(self.model, self.precision, "onnxruntime"))
                quantize_graph(self.model, path, tmp, [getattr(parts, role) for parts, roles in layers
                                                       for role in INT8_ROLES["int8"] if role not in roles])
                os.replace(tmp, qpath)
            path = qpath
        return path

    def _layer_session(self, layer: int, kind: str):
        parts = self.model.adapter.layers[layer]
        d = self.model.adapter.hidden_size
        h = torch.randn(2, 5, d)

        def build():
            if kind == "dense":
                return (_Dense(parts, parts.num_heads), (h, torch.zeros(2, 1, 5, 5)), ["h", "bias"], ["out"],
                        {"h": {0: "b", 1: "t"}, "bias": {0: "b", 1: "hb", 2: "t", 3: "t"}, "out": {0: "b", 1: "t"}})
            return (_Packed(parts, parts.num_heads), (torch.randn(3, d), h, torch.tensor([0, 1, 5]),
                                                      torch.zeros(2, 1, 3, 5)), ["x", "h", "slot", "bias"], ["out"],
                    {"x": {0: "n"}, "h": {0: "b", 1: "t"}, "slot": {0: "n"},
                     "bias": {0: "b", 1: "hb", 2: "ta", 3: "t"}, "out": {0: "n"}})

        return self._session((layer, kind), f"layer{layer}-{kind}", build)

    def _head_session(self, layer: int, criterion: str):
        def build():
            return (_Head(self.model.heads[layer].linear, criterion),
                    (torch.randn(3, self.model.adapter.hidden_size),), ["h"], ["score", "pred", "unc"],
                    {"h": {0: "n"}, "score": {0: "n"}, "pred": {0: "n"}, "unc": {0: "n"}})

        return self._session((layer, criterion), f"head{layer}-{criterion}", build)

    def climbs(self, policy: ExitPolicy, batch) -> bool:
        """Whether :meth:`climb` covers this batch and policy: one sentence with words, a softmax head, kv=keep,
        and none, static, sentence (max pool) or token exit with halted words frozen."""
        rule = policy.rule.name
        return (self.whole_sentence and batch.word_pos.shape[0] == 1 and batch.word_pos.shape[1] > 0
                and not self.model.head.structured and not policy.rescore and policy.cfg.kv == "keep"
                and (rule in ("none", "static", "token") or (rule == "sentence" and policy.cfg.pool == "max")))

    def _climb_session(self):
        example = (torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([-1, 0, 1, 1, -1]), torch.tensor([1, 2]),
                   torch.full((self.model.num_layers,), 0.1), torch.tensor(1), torch.tensor(False))
        words = {"input_ids": {1: "t"}, "token_word": {0: "t"}, "word_pos": {0: "w"}}
        if not self.branching:
            def build():
                return (_Climb(self.model), example, CLIMB_INPUTS, ["pred", "score", "exit", "counts"],
                        {**words, "pred": {0: "w"}, "score": {0: "w"}, "exit": {0: "w"}})

            return self._session("climb-unrolled", "climb-unrolled", build)
        return self._session("climb", "climb", lambda: self._branching_climb(example, words), self._open_joined)

    def _branching_climb(self, example, words):
        """The pieces of :func:`branching_climb`, each exported (and quantized) as its own graph (cached beside
        the others) -> the joined model (:meth:`_open_joined` saves it)."""
        import onnx

        m = self.model
        with torch.no_grad():  # the example state the pieces are traced with
            state, consts = _climb_start(m, *example[:3], example[4])
        consts = [c for c in consts if c is not None]
        names = _CONSTS[:len(consts)]
        per_word = {n: {0: "w"} for n in ("active", "unc", "score", "pred", "exit")}
        dims = {"h": {0: "t"}, "is_word": {0: "t"}, "tw": {0: "t"}, "band": {0: "w", 1: "w"},
                "pos": {1: "t", 2: "t"}, **per_word}
        first = self._graph("climb-first", lambda: (
            _ClimbFirst(m), example, CLIMB_INPUTS, _STATE + ["live"] + names,
            {**words, **{k: v for k, v in dims.items() if k in _STATE + names}}))
        inputs = _STATE[:-1] + ["exit_layer"] + names[:3] + ["word_pos", "taus", "maxprob"] + names[3:]
        outputs = [f"{k}_out" for k in _STATE] + ["live"]
        axes = {**{k: dims[k] for k in _STATE[:-1] + names}, "exit_layer": dims["exit"], "word_pos": {0: "w"},
                **{f"{k}_out": dims[k] for k in _STATE}}
        args = (*state, *consts[:3], example[2], example[3], example[5], *consts[3:])
        nexts = [self._graph(f"climb-next{layer}", lambda layer=layer: (_ClimbNext(m, layer), args, inputs, outputs,
                                                                         axes))
                 for layer in range(1, m.num_layers)]
        counts = self._graph("climb-counts", lambda: (_ClimbCounts(m), (state[-1], example[1]),
                                                      ["exit_layer", "token_word"], ["counts"],
                                                      {"exit_layer": {0: "w"}, "token_word": {0: "t"}}))
        return branching_climb(onnx.load(str(first)), [onnx.load(str(p)) for p in nexts], onnx.load(str(counts)))

    def _truncated_session(self, depth: int):
        def build():
            return (_Truncated(self.model, depth), (torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([1, 2])),
                    ["input_ids", "word_pos"], ["pred", "score", "counts"],
                    {"input_ids": {1: "t"}, "word_pos": {0: "w"}, "pred": {0: "w"}, "score": {0: "w"}})

        return self._session(("depth", depth), f"depth{depth}", build)

    def climb(self, batch, policy: ExitPolicy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """The whole climb of a one-sentence batch in one session call -> ``pred, score, exit (1, W)`` and the
        sentence's statistics (:func:`~earlytag.engine.plan.sentence_counts`). Full depth and static truncation
        (nobody decides anything) take a plain graph of that depth."""
        rule = policy.rule.name
        if rule in ("none", "static"):
            depth = policy.num_layers
            pred, score, counts = self._truncated_session(depth).run(None, {
                "input_ids": self._np(batch.input_ids), "word_pos": self._np(batch.word_pos[0])})
            exit_layer = torch.full((1, pred.shape[0]), depth - 1, dtype=torch.long)
            return torch.from_numpy(pred)[None], torch.from_numpy(score)[None], exit_layer, counts
        taus = list(policy.taus)
        window = policy.cfg.window if rule == "token" else MAX_WINDOW
        pred, score, exit_layer, counts = self._climb_session().run(None, {
            "input_ids": self._np(batch.input_ids), "token_word": self._np(batch.token_word[0]),
            "word_pos": self._np(batch.word_pos[0]), "taus": np.asarray(taus, dtype=np.float32),
            "window": np.asarray(window, dtype=np.int64), "maxprob": np.asarray(policy.cfg.criterion == "maxprob")})
        return (torch.from_numpy(pred)[None], torch.from_numpy(score)[None], torch.from_numpy(exit_layer)[None],
                counts)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().contiguous().numpy()

    def dense(self, layer: int, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is None:
            bias = torch.zeros(1, 1, 1, 1)
        out = self._layer_session(layer, "dense").run(None, {"h": self._np(h), "bias": self._np(bias.float())})[0]
        return torch.from_numpy(out)

    def packed(self, layer: int, x: torch.Tensor, h: torch.Tensor, slot: torch.Tensor, ta: int,
               bias: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = h.shape
        if bias is None:
            bias = torch.zeros(1, 1, ta, 1)
        elif bias.shape[2] != ta:
            bias = bias.expand(-1, -1, ta, -1)
        out = self._layer_session(layer, "packed").run(None, {"x": self._np(x), "h": self._np(h), "slot": self._np(slot),
                                                        "bias": self._np(bias.float())})[0]
        return torch.from_numpy(out)

    def head(self, layer: int, hw: torch.Tensor, criterion: str):
        score, pred, unc = self._head_session(layer, criterion).run(None, {"h": self._np(hw)})
        return torch.from_numpy(score), torch.from_numpy(pred), torch.from_numpy(unc)

