"""Layers over token ids and sequences: embedding and lstm.

Both keep every intermediate they need for backward (the token ids, the LSTM's gate
activations and cell states) in planned tensors, and step through time with matmuls
that write into views of them."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P
from nntrainer_cli.errors import DataError

from .activation import sigmoid
from .core import tile_columns
from .base import (BACKWARD, ITERATION, Access, FinalizeContext, Layer, LayerError, Phase,
                   RunContext, register)


PASSES = 8   # a tiled embedding's slots pass over the positions in this many parts


@register
class Embedding(Layer):
    """Input N:1:1:L of token ids (as floats) → N:1:L:out_dim rows of the table.

    Tileable: under a tight budget the table is cut into row tiles (ranges of token
    ids), each slot working on one. Its forward writes the positions whose ids fall in
    its rows; its gradient adds the output derivative's rows at those positions, in
    position order as the whole layer does, so a row's sum is the same bits. Slots pass
    over the positions in planned buffers an eighth of the output's size (PASSES)."""
    type = "embedding"
    weighted = True
    tileable = True
    schema = {"in_dim": P.Prop(P.positive_int, required=True),
              "out_dim": P.Prop(P.positive_int, required=True)}

    def finalize(self, ctx: FinalizeContext) -> None:
        n, c, h, length = ctx.input_shapes[0]
        if c != 1 or h != 1:
            raise LayerError(f"embedding takes ids shaped 1:1:L, got {c}:{h}:{length}",
                             "input_shape")
        d = self.p["out_dim"]
        self.request_weight(ctx, "embedding", (self.p["in_dim"], d), tiled=True)
        ctx.temp("ids", (n * length,), ITERATION, np.int64)
        ctx.output_shapes = [(n, 1, length, d)]
        if ctx.tiles > 1:   # a pass's ids less the tile's first, which lie in the tile,
            # those ids (gradient), and rows
            rows = -(-n * length // PASSES)
            for name, phase in (("", Phase.FORWARD), ("grad_", Phase.CALC_GRADIENT)):
                ctx.temp(name + "local", (rows,), phase, np.int64)
                ctx.temp(name + "inside", (rows,), phase, np.bool_)
                ctx.temp(name + "rows", (rows, d), phase)
            ctx.temp("grad_picked", (rows,), Phase.CALC_GRADIENT, np.int64)

    def forward(self, ctx: RunContext, training: bool) -> None:
        ids, table, x = ctx.temps["ids"], ctx.weights["embedding"], ctx.inputs[0]
        y = ctx.outputs[0].reshape(len(ids), -1)
        if ctx.first_tile:   # the first tile reads the ids
            low, high = x.min(), x.max()   # before the cast, which would hide NaN
            size = self.p["in_dim"]
            if x.size and not (0 <= low and high < size):
                bad = high if not high < size else low
                raise DataError(f"the data gives embedding [{self.name}] token id {bad}, "
                                f"outside 0..{size - 1} (in_dim = {size})")
            np.copyto(ids, x.reshape(-1), casting="unsafe")
        if ctx.tile is None:
            # ids are checked above; mode="clip" keeps numpy from buffering the output
            np.take(table, ids, axis=0, out=y, mode="clip")
            return
        for s, local, inside, rows in self._passes(ctx, ""):
            np.take(table, local, axis=0, out=rows, mode="clip")
            np.copyto(y[s:s + len(rows)], rows, where=inside[:, None])

    def calc_gradient(self, ctx: RunContext) -> None:
        grad = ctx.grads["embedding"]
        grad.fill(0)
        dy = ctx.out_grads[0].reshape(-1, grad.shape[1])
        if ctx.tile is None:
            np.add.at(grad, ctx.temps["ids"], dy)
            return
        for s, local, inside, rows in self._passes(ctx, "grad_"):
            # the tile's positions, in order (8 bytes each: the one list numpy makes;
            # np.compress would also copy its output), their ids and derivative rows
            at = np.flatnonzero(inside)
            picked, rows = ctx.temps["grad_picked"][:len(at)], rows[:len(at)]
            np.take(local, at, out=picked, mode="clip")
            np.take(dy[s:s + len(inside)], at, axis=0, out=rows, mode="clip")
            np.add.at(grad, picked, rows)

    @staticmethod
    def _passes(ctx: RunContext, name: str):
        """Per pass over the positions, in the buffers `name` names: its first
        position, its ids less the tile's first row, whether each lies in the tile, and
        room for its rows."""
        ids, (lo, hi), temps = ctx.temps["ids"], ctx.tile, ctx.temps
        step = len(temps[name + "local"])
        for s in range(0, len(ids), step):
            k = min(step, len(ids) - s)
            local, inside = temps[name + "local"][:k], temps[name + "inside"][:k]
            np.subtract(ids[s:s + k], lo, out=local)
            # negative ids wrap to huge unsigned ones: one comparison tests both ends
            np.less(local.view(np.uint64), hi - lo, out=inside)
            yield s, local, inside, temps[name + "rows"][:k]

    def calc_derivative(self, ctx: RunContext) -> None:
        ctx.in_grads[0].fill(0)   # ids are not differentiable


GATES = 4  # input, forget, cell candidate (g), output: NNTrainer's and PyTorch's order


@register
class LSTM(Layer):
    """Input N:1:T:F → N:1:T:unit (return_sequences) or N:1:1:unit (last step).
    Weights as NNTrainer saves them: weight_ih (F, 4u), weight_hh (u, 4u), then
    bias_h (4u) with integrate_bias, else bias_ih and bias_hh.

    Tileable: under a tight budget weight_ih is cut into row tiles (ranges of input
    features). Each forward tile adds its features' share of the gate inputs, and the
    last runs the recurrence; the first backward tile (the last one) runs
    backpropagation through time, and each tile then makes its rows' gradient and its
    features' derivative. weight_hh stays whole (every time step reads all of it) and,
    with the biases, lives in the last tile's slots only."""
    type = "lstm"
    weighted = True
    tileable = True
    untiled_tile = -1   # the recurrence's weight_hh and the biases
    derivative_needs_gradient = True   # the last tile's gradient runs BPTT
    schema = {"unit": P.Prop(P.positive_int, required=True),
              "return_sequences": P.Prop(P.boolean, False),
              "integrate_bias": P.Prop(P.boolean, False),
              "bidirectional": P.Prop(P.boolean, False),
              "dropout": P.Prop(P.unit_interval, 0.0),
              "max_timestep": P.Prop(P.positive_int),
              "hidden_state_activation": P.Prop(P.enum("tanh"), "tanh"),
              "recurrent_activation": P.Prop(P.enum("sigmoid"), "sigmoid")}
    access = Access(gradient_reads=frozenset({"input"}))
    # return_sequences: the output is the hidden states, read by backward
    SEQUENCES = Access(gradient_reads=frozenset({"input", "output"}),
                       derivative_reads=frozenset({"input", "output"}))

    def finalize(self, ctx: FinalizeContext) -> None:
        if self.p["bidirectional"]:
            raise LayerError("bidirectional lstm is not supported yet", "bidirectional")
        if self.p["dropout"]:
            raise LayerError("dropout inside lstm is not supported yet", "dropout")
        self.frozen = not ctx.trainable   # then calc_derivative runs BPTT
        n, c, t, f = ctx.input_shapes[0]
        if c != 1:
            raise LayerError(f"lstm takes sequences shaped 1:T:F, got {c}:{t}:{f}", "input_shape")
        u = self.p["unit"]
        self.n, self.t, self.u, self.f = n, t, u, f
        self.request_weight(ctx, "weight_ih", (f, GATES * u), tiled=True)
        self.request_weight(ctx, "weight_hh", (u, GATES * u))
        for b in ["bias_h"] if self.p["integrate_bias"] else ["bias_ih", "bias_hh"]:
            self.request_bias(ctx, b, (GATES * u,))
        # kept from forward to backward: gate activations, cell states, hidden states
        ctx.temp("gates", (n, t, GATES * u), ITERATION)
        ctx.temp("cells", (n, t, u), ITERATION)
        if self.p["return_sequences"]:
            ctx.access = self.SEQUENCES
        else:
            ctx.temp("hidden", (n, t, u), ITERATION)
        ctx.temp("step", (n, GATES * u), Phase.FORWARD)
        ctx.temp("d_gates", (n, t, GATES * u), BACKWARD)
        for name in ("d_hidden", "d_cell", "scratch"):
            ctx.temp(name, (n, u), BACKWARD)
        ctx.temp("w_step", (u, GATES * u), Phase.CALC_GRADIENT)
        ctx.output_shapes = [(n, 1, t if self.p["return_sequences"] else 1, u)]

    def _hidden(self, ctx: RunContext) -> np.ndarray:
        if self.p["return_sequences"]:
            return ctx.outputs[0].reshape(self.n, self.t, self.u)
        return ctx.temps["hidden"]

    def _last_tile(self, ctx: RunContext) -> bool:
        """The last forward tile (the recurrence's) and first backward one, or untiled."""
        return ctx.tile is None or ctx.tile[1] == self.f

    def _features(self, ctx: RunContext, x: np.ndarray) -> np.ndarray:
        """The (N·T, features) rows of an input-shaped array, the tile's columns."""
        return tile_columns(x.reshape(self.n * self.t, self.f), ctx.tile)

    def forward(self, ctx: RunContext, training: bool) -> None:
        n, t, u = self.n, self.t, self.u
        w = ctx.weights
        gates, cells, step = ctx.temps["gates"], ctx.temps["cells"], ctx.temps["step"]
        hidden = self._hidden(ctx)
        x = self._features(ctx, ctx.inputs[0])
        if ctx.first_tile:
            np.matmul(x, w["weight_ih"], out=gates.reshape(n * t, GATES * u))
        else:   # a later tile adds its share step by step: no gates-sized buffer
            x = x.reshape(n, t, -1)
            for k in range(t):
                np.matmul(x[:, k], w["weight_ih"], out=step)
                gates[:, k] += step
        if not self._last_tile(ctx):
            return
        for b in ("bias_h", "bias_ih", "bias_hh"):
            if b in w:
                gates += w[b]
        for k in range(t):
            g = gates[:, k]
            if k:
                np.matmul(hidden[:, k - 1], w["weight_hh"], out=step)
                g += step
            sigmoid(g[:, :2 * u], g[:, :2 * u])              # input, forget
            np.tanh(g[:, 2 * u:3 * u], out=g[:, 2 * u:3 * u])  # candidate
            sigmoid(g[:, 3 * u:], g[:, 3 * u:])              # output
            c = cells[:, k]
            np.multiply(g[:, :u], g[:, 2 * u:3 * u], out=c)
            if k:
                np.multiply(g[:, u:2 * u], cells[:, k - 1], out=step[:, :u])
                c += step[:, :u]
            np.tanh(c, out=hidden[:, k])
            hidden[:, k] *= g[:, 3 * u:]
        if not self.p["return_sequences"]:
            np.copyto(ctx.outputs[0].reshape(n, u), hidden[:, t - 1])

    def _backprop_through_time(self, ctx: RunContext) -> None:
        """dL/d(gate pre-activations) for every step into d_gates."""
        n, t, u = self.n, self.t, self.u
        tm = ctx.temps
        gates, cells, dg = tm["gates"], tm["cells"], tm["d_gates"]
        dh, dc, s = tm["d_hidden"], tm["d_cell"], tm["scratch"]
        dy = ctx.out_grads[0].reshape(n, -1, u)
        dh.fill(0)
        dc.fill(0)
        for k in range(t - 1, -1, -1):
            if self.p["return_sequences"]:
                dh += dy[:, k]
            elif k == t - 1:
                dh += dy[:, 0]
            g, d = gates[:, k], dg[:, k]
            i, f, cand, o = (g[:, j * u:(j + 1) * u] for j in range(GATES))
            di, df, dcand, do = (d[:, j * u:(j + 1) * u] for j in range(GATES))
            np.tanh(cells[:, k], out=s)                      # tanh(c)
            np.multiply(dh, s, out=do)                       # dL/do
            np.multiply(s, s, out=s)
            np.subtract(1, s, out=s)
            s *= o
            s *= dh
            dc += s                                          # dL/dc
            np.multiply(dc, cand, out=di)
            np.multiply(dc, i, out=dcand)
            if k:
                np.multiply(dc, cells[:, k - 1], out=df)
            else:
                df.fill(0)
            dc *= f                                          # carried to step k-1
            for a, da in ((i, di), (f, df), (o, do)):        # through the sigmoids
                np.subtract(1, a, out=s)
                s *= a
                da *= s
            np.multiply(cand, cand, out=s)                   # through the tanh
            np.subtract(1, s, out=s)
            dcand *= s
            np.matmul(d, ctx.weights["weight_hh"].T, out=dh)

    def calc_gradient(self, ctx: RunContext) -> None:
        n, t, u = self.n, self.t, self.u
        dg, g = ctx.temps["d_gates"], ctx.grads
        flat = dg.reshape(n * t, GATES * u)
        if self._last_tile(ctx):
            self._backprop_through_time(ctx)
        if "weight_ih" in g:
            np.matmul(self._features(ctx, ctx.inputs[0]).T, flat, out=g["weight_ih"])
        if not self._last_tile(ctx):
            return
        if "weight_hh" in g:
            hidden, w_step = self._hidden(ctx), ctx.temps["w_step"]
            g["weight_hh"].fill(0)
            for k in range(1, t):
                np.matmul(hidden[:, k - 1].T, dg[:, k], out=w_step)
                g["weight_hh"] += w_step
        for b in ("bias_h", "bias_ih", "bias_hh"):
            if b in g:
                np.sum(flat, axis=0, out=g[b])

    def calc_derivative(self, ctx: RunContext) -> None:
        if self.frozen and self._last_tile(ctx):   # calc_gradient did not run
            self._backprop_through_time(ctx)
        n, t = self.n, self.t
        np.matmul(ctx.temps["d_gates"].reshape(n * t, -1), ctx.weights["weight_ih"].T,
                  out=self._features(ctx, ctx.in_grads[0]))
