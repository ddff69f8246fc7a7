"""GATv2 message passing on a neural graph, computed block by block instead of edge by edge.

The neural graph of a chain (:mod:`nwa.weights.graph`) is a stack of complete bipartite blocks:
every input neuron of layer ``l`` is joined to every output neuron of layer ``l`` by the weight
``W_l[j, i, :]``, and NWPA uses each such edge in both directions. :func:`gatv2_chain` computes
exactly what ``torch_geometric.nn.GATv2Conv`` computes on that graph (same parameters, same
attention logits, the same per-target softmax, including its ``1e-16``), but holds the edges as
dense ``[B, out, in]`` blocks:

- the per-edge, per-channel attention pre-activation
  :math:`\\mathrm{LeakyReLU}(x^r_\\text{target} + x^l_\\text{source} + W_e e_{ij})` is the only
  part whose size is ``edges x channels``; :class:`_BlockLogits` computes it in cache-sized tiles
  and reduces it to one logit per edge and head right away (recomputing the tile in backward), so
  the ``[E, heads, channels]`` tensors of the edge-list implementation are never materialised;
- :math:`W_e e_{ij}` is shared by both directions of an edge (they differ only in the direction
  flag, whose column of :math:`W_e` is folded into a node term);
- the softmax over a target's incoming edges and the weighted sum of messages are dense
  reductions and batched matrix products over ``[B, heads, out, in]`` logits (the sum of messages
  is normalised after aggregation, on ``[B, heads, nodes, channels]``).

Only node-wise maps, sums over neighbours and softmaxes over neighbours are used, so the result is
permutation-equivariant in the hidden neurons exactly as the edge-list version is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch_geometric.nn import GATv2Conv

TILE_EDGES_CPU = 2048
"""Edges per tile on CPU: a tile's three ``[edges, channels]`` buffers stay in the L2 cache."""
TILE_EDGES_ACCEL = 1 << 22
"""Edges per tile on accelerators: few, large kernels."""

TILE_THREADS: int | None = 1
"""CPU threads for the tile loops (``None``: torch's setting). A loop is thousands of small ops;
with several OpenMP threads each op ends in a team barrier, which costs little on idle cores but
makes the loop several times slower whenever the cores are shared with other work."""

Tile = tuple[int, int, int, int]


@contextlib.contextmanager
def _tile_context(device: torch.device) -> Iterator[None]:
    """Tile loops: plain dtypes (no autocast: they write into preallocated buffers), and
    :data:`TILE_THREADS` CPU threads."""
    with torch.autocast(device.type, enabled=False):
        n = torch.get_num_threads()
        if device.type != "cpu" or TILE_THREADS is None or n == TILE_THREADS:
            yield
            return
        torch.set_num_threads(TILE_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(n)


def _tiles(b: int, o: int, i: int, tile: int) -> Iterator[Tile]:
    """``(b0, b1, j0, j1)`` tiles of a ``[b, o, i]`` block with about ``tile`` edges each."""
    if o * i <= tile:
        step = max(1, tile // (o * i))
        for b0 in range(0, b, step):
            yield b0, min(b, b0 + step), 0, o
    else:
        rows = max(1, tile // i)
        for b0 in range(b):
            for j0 in range(0, o, rows):
                yield b0, b0 + 1, j0, min(o, j0 + rows)


def _head_matrix(att: torch.Tensor) -> torch.Tensor:
    """[H, C] attention vectors -> the block-diagonal [H, H * C] that sums each head's channels."""
    h, c = att.shape
    eye = torch.eye(h, dtype=att.dtype, device=att.device)
    return (eye[:, :, None] * att[None, :, :]).reshape(h, h * c)


class _BlockLogits(torch.autograd.Function):
    """GATv2 logits of both directions of the edges of one complete bipartite block.

    For edge ``(j, i)`` of ``w`` [B, O, I, k] and direction ``d``, per head ``h``:
    ``l_d[b, h, j, i] = sum_c att[h, c] * leaky_relu(z_d[b, j, i])[h, c]`` with
    ``z_d[b, j, i] = w[b, j, i] @ wk.T + r_d[b, j] + q_d[b, i]``, ``wk`` [D, k], ``r_d`` [B, O, D],
    ``q_d`` [B, I, D], ``D = H * C``; returns ``l_1, l_2`` [B, H, O, I].

    Backward recomputes ``z`` tile by tile. With ``u = g_h * leaky_relu'(z)`` every gradient is a
    sum of ``u`` against something small (``att * u`` is the gradient of ``z``), and since
    ``leaky_relu(z) = leaky_relu'(z) * z``, ``d att = sum u * z`` splits into the sums of ``u``
    that the other gradients need anyway.
    """

    @staticmethod
    def forward(ctx, w, wk, r1, q1, r2, q2, att, slope, tile):  # type: ignore[override]
        bsz, o, i, _ = w.shape
        h = att.shape[0]
        out = (w.new_empty(bsz, h, o, i), w.new_empty(bsz, h, o, i))
        pairs = ((r1, q1), (r2, q2))
        tiles = list(_tiles(bsz, o, i, tile))
        with _tile_context(w.device):
            _forward_tiles(tiles, w, wk.t(), pairs, _head_matrix(att), slope, out)
        ctx.save_for_backward(w, wk, r1, q1, r2, q2, att)
        ctx.slope, ctx.tile = slope, tile
        return out

    @staticmethod
    def backward(ctx, g1, g2):  # type: ignore[override]
        w, wk, r1, q1, r2, q2, att = ctx.saved_tensors
        bsz, o, i, _ = w.shape
        h, c = att.shape
        a = att.reshape(1, h * c)
        dw = None
        if ctx.needs_input_grad[0]:
            dw = torch.zeros_like(w, memory_format=torch.contiguous_format)
        ur = (w.new_empty(r1.shape), w.new_empty(r2.shape))  # sums of u over sources
        uq = (w.new_zeros(q1.shape), w.new_zeros(q2.shape))  # sums of u over targets
        spread = torch.eye(h, dtype=w.dtype, device=w.device).repeat_interleave(c, dim=1)
        tiles = list(_tiles(bsz, o, i, ctx.tile))
        grads = (g1.contiguous(), g2.contiguous())
        pairs = ((r1, q1), (r2, q2))
        with _tile_context(w.device):
            # p [k, D]: the sum over edges of w (x) u, both directions
            p = _backward_tiles(tiles, w, wk, pairs, grads, spread, ctx.slope, ur, uq, dw, a)
        datt = (wk.t() * p).sum(0)
        for (r, q), s_r, s_q in zip(pairs, ur, uq):
            datt = datt + (r * s_r).sum((0, 1)) + (q * s_q).sum((0, 1))
        da = (ur[0] * a, uq[0] * a, ur[1] * a, uq[1] * a)
        return dw, (p * a).t(), *da, datt.view(h, c), None, None


def _tile_edges(tile: Tile, w: torch.Tensor) -> tuple[int, int, int, torch.Tensor]:
    """``(models, rows, edges, w_tile [edges, k])`` of one tile."""
    b0, b1, j0, j1 = tile
    bs, rows, i = b1 - b0, j1 - j0, w.shape[2]
    return bs, rows, bs * rows * i, w[b0:b1, j0:j1].reshape(bs * rows * i, w.shape[3])


def _max_edges(tiles: list[Tile], i: int) -> int:
    # from the bounds: slicing the (often strided) block to count would copy it
    return max((b1 - b0) * (j1 - j0) for b0, b1, j0, j1 in tiles) * i


def _forward_tiles(tiles: list[Tile], w, wkt, pairs, amt, slope, out) -> None:
    d = wkt.shape[1]
    i = w.shape[2]
    nmax = _max_edges(tiles, w.shape[2])
    ebuf, zbuf = w.new_empty(nmax, d), w.new_empty(nmax, d)
    for tile in tiles:
        b0, b1, j0, j1 = tile
        bs, rows, n, wt = _tile_edges(tile, w)
        e = torch.mm(wt, wkt, out=ebuf[:n]).view(bs, rows, i, d)
        z = zbuf[:n]
        z4 = z.view(bs, rows, i, d)
        for (r, q), lo in zip(pairs, out):
            torch.add(e, r[b0:b1, j0:j1, None], out=z4)
            z4.add_(q[b0:b1, None])
            F.leaky_relu_(z, slope)
            lt = lo[b0:b1, :, j0:j1].flatten(2)  # [bs, H, rows * I]
            if bs == 1:
                torch.mm(amt, z.t(), out=lt[0])
            else:
                torch.bmm(amt.expand(bs, -1, -1), z.view(bs, n // bs, d).transpose(1, 2), out=lt)


def _backward_tiles(tiles: list[Tile], w, wk, pairs, grads, spread, slope, ur, uq, dw, a):
    d, k = wk.shape
    i = w.shape[2]
    wkt, wka = wk.t(), wk * a.t()
    p = w.new_zeros(k, d)
    nmax = _max_edges(tiles, w.shape[2])
    ebuf, zbuf, ubuf = (w.new_empty(nmax, d) for _ in range(3))
    for tile in tiles:
        b0, b1, j0, j1 = tile
        bs, rows, n, wt = _tile_edges(tile, w)
        e = torch.mm(wt, wkt, out=ebuf[:n]).view(bs, rows, i, d)
        z, u = zbuf[:n], ubuf[:n]
        z4, u4 = z.view(bs, rows, i, d), u.view(bs, rows, i, d)
        for t, (r, q) in enumerate(pairs):
            torch.add(e, r[b0:b1, j0:j1, None], out=z4)
            z4.add_(q[b0:b1, None])
            gt = grads[t][b0:b1, :, j0:j1].flatten(2)  # [bs, H, rows * I]
            if bs == 1:  # u = g_h * leaky_relu'(z), g spread over each head's channels
                torch.mm(gt[0].t(), spread, out=u)
            else:
                torch.bmm(gt.transpose(1, 2), spread.expand(bs, -1, -1), out=u.view(bs, -1, d))
            torch.ops.aten.leaky_relu_backward.grad_input(u, z, slope, False, grad_input=u)
            torch.sum(u4, 2, out=ur[t][b0:b1, j0:j1])
            uq[t][b0:b1] += u4.sum(1)
            p.addmm_(wt.t(), u)
            if dw is not None:
                dw[b0:b1, j0:j1].view(n, k).addmm_(u, wka)
    return p


def supports(conv: GATv2Conv) -> bool:
    """Whether :func:`gatv2_chain` reproduces this conv (the configuration NWPA builds)."""
    return (
        isinstance(conv, GATv2Conv)
        and isinstance(conv.in_channels, int)
        and conv.lin_edge is not None
        and not conv.add_self_loops
        and not conv.share_weights
        and conv.concat
        and conv.res is None
    )


def gatv2_chain(
    conv: GATv2Conv,
    h: torch.Tensor,
    blocks: Sequence[torch.Tensor],
    tile: int | None = None,
) -> torch.Tensor:
    """``conv`` on the neural graph of a batch of chains, each weight edge used in both directions.

    Equal (up to float summation order) to ``conv(h, edge_index, edge_attr)`` with NWPA's
    ``edge_index = [forward edges, flipped edges]`` and ``edge_attr = [[w, 0], [w, 1]]``.

    Args:
        conv: A GATv2Conv with ``edge_dim = k_max + 1`` (:func:`supports` is true).
        h: Node states [B, N, F], nodes in the graph layout (input neurons, then each layer's
            outputs).
        blocks: Per layer the edge features ``W_l`` [B, out_l, in_l, k_l], ``k_l <= k_max``
            (zero padding to ``k_max`` may be left out).
        tile: Edges per tile (default by device).

    Returns:
        [B, N, heads * out_channels]
    """
    bsz, n, _ = h.shape
    heads, ch = conv.heads, conv.out_channels
    sizes = [blocks[0].shape[2]] + [w.shape[1] for w in blocks]
    if sum(sizes) != n:
        raise ValueError(f"the chain has {sum(sizes)} neurons, h has {n} nodes")
    offs = [0]
    for s in sizes:
        offs.append(offs[-1] + s)
    if tile is None:
        tile = TILE_EDGES_CPU if h.device.type == "cpu" else TILE_EDGES_ACCEL
    xl, xr = conv.lin_l(h), conv.lin_r(h)  # [B, N, D]: source and target terms

    def grp(t: torch.Tensor, g: int, dim: int = 1) -> torch.Tensor:
        return t.narrow(dim, offs[g], sizes[g])

    dt = xl.dtype
    we = conv.lin_edge.weight.to(dt)  # [D, k_max + 1]; the last column is the direction flag
    flag = we[:, -1]
    att = conv.att.view(heads, ch).to(dt)
    fwd, bwd = [], []  # logits [B, H, out_l, in_l]: targets out_l (fwd) or in_l (bwd)
    for layer, w in enumerate(blocks):
        k = w.shape[-1]
        lf, lb = _BlockLogits.apply(
            w.to(dt),
            we[:, :k],
            grp(xr, layer + 1),
            grp(xl, layer),
            grp(xl, layer + 1) + flag,
            grp(xr, layer),
            att,
            conv.negative_slope,
            tile,
        )
        fwd.append(lf)
        bwd.append(lb)
    return _aggregate(conv, xl.view(bsz, n, heads, ch).transpose(1, 2), fwd, bwd, grp)


def _aggregate(
    conv: GATv2Conv,
    xlh: torch.Tensor,
    fwd: list[torch.Tensor],
    bwd: list[torch.Tensor],
    grp: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Softmax over each target's incoming edges and the attention-weighted sum of sources.

    ``xlh`` [B, H, N, C] source terms; ``fwd[l]``, ``bwd[l]`` [B, H, out_l, in_l] logits.
    """
    bsz, heads, n, ch = xlh.shape
    depth = len(fwd)
    attn_dropout = conv.training and conv.dropout > 0
    outs = []
    for g in range(depth + 1):
        # incoming edges of group g: forward edges of layer g - 1 (sources on the last dim) and
        # flipped edges of layer g (sources on dim 2); one softmax over both, per head, as
        # torch_geometric.utils.softmax computes it (max-shifted, sum + 1e-16)
        parts = []  # (exp(logit - max) with targets on dim 2, sources)
        if g > 0:
            parts.append((fwd[g - 1], grp(xlh, g - 1, 2)))
        if g < depth:
            parts.append((bwd[g].transpose(2, 3), grp(xlh, g + 1, 2)))
        m = parts[0][0].detach().amax(3)
        if len(parts) == 2:
            m = torch.maximum(m, parts[1][0].detach().amax(3))
        exps = [((lg - m[..., None]).exp(), src) for lg, src in parts]
        total = exps[0][0].sum(3)
        if len(exps) == 2:
            total = total + exps[1][0].sum(3)
        total = (total + 1e-16)[..., None]
        if attn_dropout:  # dropout acts on the normalised coefficients
            out = sum(F.dropout(e / total, conv.dropout, True) @ src for e, src in exps)
        else:  # normalise the [B, H, nodes, C] sums, not the [B, H, out, in] coefficients
            out = sum(e @ src for e, src in exps) / total
        outs.append(out)
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(bsz, n, heads * ch)
    return out + conv.bias if conv.bias is not None else out
