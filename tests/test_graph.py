"""Neural graphs of whole networks: layouts of ResNets, ViTs and chains, limits, errors, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from nwa.errors import GraphBuildError
from nwa.weights.graph import (
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_QK,
    EDGE_RESIDUAL,
    F_BIAS,
    F_EXTRA,
    F_HAS_NORM,
    F_NORM_MEAN,
    F_NORM_VAR,
    F_NORM_W,
    F_POS,
    NODE_HEAD,
    NODE_INPUT,
    NODE_OUTPUT,
    NODE_SUM,
    dense_groups,
    edge_list,
    graph_shapes_of,
)
from nwa.weights.graph_archs import plan_graph
from tests.networks import float_state, network


def _plan(state, heads=None, **kw):
    return plan_graph(
        {k: v.shape for k, v in state.items()}, "net.safetensors", list(state), heads=heads, **kw
    )


def _rows(plan, name):
    """The node rows of the group called ``name``."""
    i = [g.name for g in plan.groups].index(name)
    return slice(plan.offsets[i], plan.offsets[i + 1])


def test_resnet_graph_layout():
    model, _, _ = network("resnet")
    state = float_state(model)
    plan = _plan(state)
    g = plan.build(state)
    assert plan.family == "resnet" and g.num_nodes == plan.num_nodes == sum(
        x.size for x in plan.groups
    )
    # every conv and the fc are dense blocks; residual sums get identity edges
    convs = [n for n, v in state.items() if v.dim() >= 2]
    assert len([b for b in plan.blocks if b.weight is not None]) == len(convs)
    sums = [x for x in plan.groups if x.kind == NODE_SUM]
    assert len(sums) == 5  # one per block
    assert int((g.sparse_kind == EDGE_RESIDUAL).sum()) == 2 * sum(x.size for x in sums)
    # BatchNorm statistics are node features of the channels they normalize
    rows = _rows(plan, "layer2.0.conv1")
    torch.testing.assert_close(g.x[rows, F_NORM_MEAN], state["layer2.0.bn1.running_mean"])
    torch.testing.assert_close(g.x[rows, F_NORM_VAR], state["layer2.0.bn1.running_var"])
    assert torch.all(g.x[rows, F_HAS_NORM] == 1)
    rows = _rows(plan, "layer2.0.downsample.0")
    torch.testing.assert_close(g.x[rows, F_NORM_W], state["layer2.0.downsample.1.weight"])
    # 3x3 kernels are edge features; inputs and outputs alone are positional
    w = state["layer2.0.conv2.weight"]
    stack = next(s for s in dense_groups(g) if s.w.shape[1:] == (8, 8, 9) and s.kind == EDGE_CONV)
    assert any(torch.equal(stack.w[i], w.reshape(8, 8, 9)) for i in range(len(stack.w)))
    out = _rows(plan, "fc")
    torch.testing.assert_close(g.x[out, F_BIAS], state["fc.bias"])
    assert torch.all(g.node_kind[out] == NODE_OUTPUT) and torch.any(g.x[out, F_POS:] != 0)
    hidden = (g.node_kind != NODE_INPUT) & (g.node_kind != NODE_OUTPUT)
    assert torch.all(g.x[hidden, F_POS:] == 0)


def test_resnet_layer_range_and_chain_selection():
    model, _, _ = network("resnet")
    state = float_state(model)
    tail = {k: v for k, v in state.items() if k.startswith(("layer4.", "fc."))}
    plan = plan_graph({k: v.shape for k, v in tail.items()}, "net", list(state))
    assert plan.family == "resnet" and plan.groups[0].kind == NODE_INPUT
    assert not plan.groups[0].positional  # those channels are hidden in the whole network
    assert plan.groups[0].size == 8 and plan.num_outputs == 5
    # conv weights alone (no norms, no downsample) are read as a chain
    chain = {k: state[k] for k in ("layer4.0.conv1.weight", "layer4.0.conv2.weight", "fc.weight")}
    plan = plan_graph({k: v.shape for k, v in chain.items()}, "net", list(state))
    assert plan.family == "sequential" and len(plan.blocks) == 3


def test_vit_graph_layout():
    model, _, heads = network("vit")
    state = float_state(model)
    plan = _plan(state, heads=heads)
    g = plan.build(state)
    assert plan.family == "vit"
    d = 8
    # query, key and value neurons carry their slice of the qkv bias
    for i, part in enumerate("qkv"):
        rows = _rows(plan, f"blocks.1.attn.{part}")
        torch.testing.assert_close(
            g.x[rows, F_BIAS], state["blocks.1.attn.qkv.bias"][i * d : (i + 1) * d]
        )
    # the stream before block 1 carries block 0's MLP output bias, its layer scale, and norm1 of block 1
    rows = _rows(plan, "blocks.0")
    torch.testing.assert_close(g.x[rows, F_BIAS], state["blocks.0.mlp.fc2.bias"])
    torch.testing.assert_close(g.x[rows, F_EXTRA], state["blocks.0.ls2.gamma"])
    torch.testing.assert_close(g.x[rows, F_NORM_W], state["blocks.1.norm1.weight"])
    rows = _rows(plan, "patch_embed")
    torch.testing.assert_close(g.x[rows, F_EXTRA], state["cls_token"].reshape(-1))
    torch.testing.assert_close(g.x[rows, F_EXTRA + 1], state["pos_embed"][0].mean(0))
    assert int((g.sparse_kind == EDGE_QK).sum()) == 2 * d  # query i meets key i, per block
    assert int((g.node_kind == NODE_HEAD).sum()) == 2 * heads
    stack = next(s for s in dense_groups(g) if s.w.shape[1:] == (8, 1, 64))  # 8x8 patches
    torch.testing.assert_close(stack.w[0], state["patch_embed.proj.weight"].reshape(8, 1, 64))
    assert (
        plan_graph({k: v.shape for k, v in state.items()}, "n").num_nodes
        == plan.num_nodes - 2 * heads
    )


def test_sequential_flatten_norms_and_file_order():
    model, _, _ = network("cnn")
    state = float_state(model)
    plan = _plan(state)
    g = plan.build(state)
    assert plan.family == "sequential" and [x.size for x in plan.groups] == [1, 4, 6, 5]
    flat = plan.blocks[-1]
    assert flat.kind == EDGE_FLATTEN and flat.k == 4  # 2x2 positions per channel
    stack = next(s for s in dense_groups(g) if s.kind == EDGE_FLATTEN)
    torch.testing.assert_close(stack.w[0], state["6.weight"].reshape(5, 6, 4))
    assert edge_list(g)[1].shape == (plan.num_edges, 9)
    torch.testing.assert_close(g.x[1:5, F_NORM_W], state["1.weight"])
    # a file that does not record module order (names sorted as text) is read in natural order
    big = nn.Sequential(*[nn.Linear(3 if i == 0 else 4, 4) for i in range(12)])
    shuffled = dict(sorted(big.state_dict().items()))
    assert list(shuffled)[:4] == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert list(shuffled)[4].startswith("10.")
    plan = plan_graph({k: v.shape for k, v in shuffled.items()}, "mlp")
    assert [b.weight.name for b in plan.blocks] == [f"{i}.weight" for i in range(12)]


def test_bad_networks_fail_with_one_line_naming_file_and_tensor():
    model, _, _ = network("resnet")
    state = float_state(model)
    state["layer1.0.se.fc1.weight"] = torch.randn(2, 4, 1, 1)
    with pytest.raises(GraphBuildError) as e:
        _plan(state)
    msg = str(e.value)
    assert "net.safetensors" in msg and "layer1.0.se.fc1.weight" in msg and "\n" not in msg
    state = float_state(model)
    with pytest.raises(
        GraphBuildError, match=r"more than the limit of 1,000; select a layer range"
    ):
        _plan(state, max_edges=1000)
    cut = {k: v for k, v in state.items() if not k.startswith("layer2.0.downsample")}
    with pytest.raises(GraphBuildError, match="cuts a block: layer2.0.downsample"):
        plan_graph({k: v.shape for k, v in cut.items()}, "net.safetensors", list(state))
    with pytest.raises(GraphBuildError, match="reads 7 inputs but the layer before has 4"):
        plan_graph({"a.weight": (4, 3), "b.weight": (2, 7)}, "mlp.safetensors")
    plan = _plan(state)
    state["fc.weight"] = torch.randn(6, 16)
    with pytest.raises(Exception, match=r"fc.weight.*differs"):
        plan.build(state, "net.safetensors")


def test_graphs_of_different_networks_batch():
    graphs, plans = [], []
    for name in ("mlp", "cnn", "resnet", "vit"):
        model, _, heads = network(name)
        state = float_state(model)
        plans.append(_plan(state, heads=heads))
        graphs.append(plans[-1].build(state))
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 4 and batch.num_nodes == sum(p.num_nodes for p in plans)
    edges = torch.cat([edge_list(g)[0] + off for g, off in zip(graphs, batch.ptr[:-1])], 1)
    got = edge_list(batch)[0]
    assert sorted(map(tuple, got.T.tolist())) == sorted(map(tuple, edges.T.tolist()))
    assert batch.node_group.max() + 1 == sum(len(p.groups) for p in plans)
    shapes = graph_shapes_of(plans)
    assert shapes.edge_dim == 64 and shapes.outputs == 5
    assert shapes.depth == max(p.depth for p in plans)
