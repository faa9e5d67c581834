"""Split a score network into a forward-with-saves graph and a backward (VJP) graph.

One guided DPS step needs the score s(x, t) and, once the runtime has formed the cotangent v
from the score (through x0_hat and the operator), v^T ds/dx. Doing that with one forward and one
backward and no recomputation means the backward must reuse the forward's intermediates:

1. Trace the joint function (x, t[, cond], v) -> (s, v^T ds/dx) = torch.func.vjp with `make_fx` in
   symbolic mode (the batch axis the only symbolic size), with the core ATen decompositions and
   one of our own: `aten.convolution_backward` becomes a convolution over the flipped kernel
   where the stride is 1 and a transposed convolution (ONNX ConvTranspose) where it is not, so
   the graph holds only standard ops.
2. Partition that joint graph by data dependence: every node that does not depend on v belongs
   to the forward graph; every node that does, to the backward graph. The forward nodes the
   backward reads are the saved tensors: outputs of the forward graph, inputs of the backward.
   Nothing is computed twice.

A site-aware prior takes its condition maps (runtime.condition) as a third input: the forward
graph reads it like x and t, and the VJP stays with respect to x only (the condition is data).

The two FX graphs come back as `nn.Module`s with the weights as constants, ready for the
dynamo ONNX exporter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

aten = torch.ops.aten


def _convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    """d(conv)/d(input) as a transposed convolution; weight and bias gradients are not needed."""
    if transposed:
        raise NotImplementedError("VJP export of transposed convolutions is not supported")
    grad_in = None
    if output_mask[0]:
        extra = []
        for d in range(2):
            produced = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1
            extra.append(inp.shape[2 + d] - produced)
        plain = (list(stride) == [1, 1] and list(dilation) == [1, 1] and groups == 1 and extra == [0, 0]
                 and all(padding[d] <= weight.shape[2 + d] - 1 for d in range(2)))
        if plain:
            # Stride 1: the transposed convolution is an ordinary one over the spatially flipped
            # kernel with in/out channels swapped and "full minus p" padding. ONNX Runtime's Conv
            # (MLAS, NCHWc) is several times faster than its ConvTranspose on CPUs, and the
            # flip/transpose of the constant weight folds away when the session is created.
            flipped = aten.transpose(aten.flip(weight, [2, 3]), 0, 1)
            pad = [weight.shape[2 + d] - 1 - padding[d] for d in range(2)]
            grad_in = aten.convolution(grad_out, flipped, None, [1, 1], pad, [1, 1], False, [0, 0], 1)
        else:
            grad_in = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_in, None, None


def _upsample_nearest2d_backward(grad_out, output_size, input_size, scales_h=None, scales_w=None):
    """Backward of an integer-factor nearest upsample: sum over each factor x factor block."""
    b, c, h, w = input_size
    fh, fw = output_size[0] // h, output_size[1] // w
    return grad_out.reshape(grad_out.shape[0], c, h, fh, w, fw).sum(dim=(3, 5))


def decompositions() -> dict:
    table = dict(torch._decomp.core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.upsample_nearest2d_backward.default] = _upsample_nearest2d_backward
    # Uninitialised buffers have no ONNX op; autograd only creates them to fill them.
    table[aten.empty_like.default] = lambda x, **kw: aten.full_like.default(x, 0.0, dtype=kw.get("dtype"))
    return table


def trace_joint(model: nn.Module, example: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """FX graph of (params, x, t[, cond], v) -> (s, v^T ds/dx) with a symbolic batch size;
    `example` is (x, t) or, for a site-aware model, (x, t, cond)."""
    model = model.eval()
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    params = {k: p.detach() for k, p in params.items()}

    def joint(p, x, *rest):
        *inputs, v = rest  # t[, cond]
        s, pullback = torch.func.vjp(lambda x_: torch.func.functional_call(model, p, (x_, *inputs)), x)
        return s, pullback(v)[0]

    # Only the batch axis is symbolic: fake inputs whose other sizes (the weights', the tile's) are
    # static keep the shape solver out of every convolution (a 12x faster trace than make_fx's
    # all-symbolic default, whose extra sizes were made constants afterwards anyway).
    mode = FakeTensorMode(shape_env=ShapeEnv())

    def fake(a: torch.Tensor, batched: bool) -> torch.Tensor:
        sizes = [DimDynamic.DYNAMIC if batched and i == 0 else DimDynamic.STATIC for i in range(a.dim())]
        return mode.from_tensor(a, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    inputs = [fake(a, True) for a in (*example, torch.randn_like(example[0]))]
    gm = make_fx(joint, decomposition_table=decompositions(), tracing_mode="symbolic")(
        {k: fake(p, False) for k, p in params.items()}, *inputs)
    _specialize_all_but_batch(gm, len(example))
    return gm


def _specialize_all_but_batch(gm: fx.GraphModule, inputs: int) -> None:
    """Make every symbolic size that does not involve the batch a constant (the tile size is fixed
    per package); only the batch axis stays dynamic. `inputs`: x, t[, cond] before v."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    batch = placeholders[-1 - inputs].meta["val"].shape[0].node.expr  # x is (B, C, H, W)
    for node in list(gm.graph.nodes):
        val = node.meta.get("val")
        if not isinstance(val, (torch.SymInt, torch.SymFloat)) or batch in val.node.expr.free_symbols:
            continue
        value = int(val.node.hint) if isinstance(val, torch.SymInt) else float(val.node.hint)
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda a: value if a is node else a)  # noqa: B023
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)  # noqa: B023
    gm.graph.eliminate_dead_code()
    gm.recompile()


@dataclass
class SplitGraphs:
    forward: fx.GraphModule  # (x, t[, cond]) -> (s, *saved)
    backward: fx.GraphModule  # (*saved, v) -> vjp
    saved_names: list[str]


def split_joint(gm: fx.GraphModule, inputs: int = 2) -> SplitGraphs:
    """Partition a traced joint graph (see module doc) into forward and backward graphs.
    `inputs`: the network inputs before v, x first (2: x, t; 3: x, t, cond)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    param_nodes, net_inputs, v_node = placeholders[:-1 - inputs], placeholders[-1 - inputs:-1], placeholders[-1]
    x_node = net_inputs[0]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    s_node, vjp_node = out_node.args[0]

    depends_on_v = {v_node}
    for node in gm.graph.nodes:
        if node.op == "call_function" and any(a in depends_on_v for a in node.all_input_nodes):
            depends_on_v.add(node)
    fwd_nodes = [n for n in gm.graph.nodes if n not in depends_on_v and n.op != "output"]
    bwd_nodes = [n for n in gm.graph.nodes if n in depends_on_v and n is not v_node]
    # Values that depend on neither x nor t (symbolic sizes, constants such as zero buffers) are
    # recomputed in the backward (sizes from v, which has x's shape); only real activations cross.
    from_inputs = set(net_inputs)
    for node in gm.graph.nodes:
        if node.op == "call_function" and any(a in from_inputs for a in node.all_input_nodes):
            from_inputs.add(node)
    sym = {n for n in fwd_nodes if n.op == "call_function" and not isinstance(n.meta.get("val"), torch.Tensor)}
    cheap = {n for n in fwd_nodes if n.op == "call_function" and (n in sym or n not in from_inputs)}
    recompute: list[fx.Node] = []
    for node in bwd_nodes:
        _collect(node, cheap, recompute)
    saved = []
    for node in bwd_nodes + recompute:
        for a in node.all_input_nodes:
            if a not in depends_on_v and a not in saved and a not in param_nodes and a not in recompute and a is not x_node:
                saved.append(a)
    params = {n: _param_value(gm, n) for n in param_nodes}
    forward = _build(gm, fwd_nodes, inputs=net_inputs, outputs=[s_node] + saved, constants=params)
    keep = set(recompute) | (depends_on_v - {v_node})
    bwd_ordered = [n for n in gm.graph.nodes if n in keep]
    backward = _build(gm, bwd_ordered, inputs=saved + [v_node], outputs=[vjp_node], constants=params,
                      alias={x_node: v_node})
    return SplitGraphs(forward, backward, [n.name for n in saved])


def _collect(node: fx.Node, cheap: set, out: list) -> None:
    """Add the cheap (input-independent) nodes `node` reads, with their own inputs first."""
    for a in node.all_input_nodes:
        if a in cheap and a not in out:
            _collect(a, cheap, out)
            out.append(a)


def _param_value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    return gm._ckm_params[node.target]


def _build(gm, nodes, inputs, outputs, constants, alias=None) -> fx.GraphModule:
    """A new GraphModule holding `nodes`, reading `inputs`, returning `outputs`; params as buffers.

    `alias` maps a node of the old graph to an input that stands in for it (x -> v for sizes).
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    root = nn.Module()
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for old, new in (alias or {}).items():
        env[old] = env[new]
    for i, (node, value) in enumerate(constants.items()):
        if any(node in n.all_input_nodes for n in nodes):
            name = f"const_{i}"
            root.register_buffer(name, value)
            env[node] = graph.get_attr(name)
    for node in nodes:
        if node in env or node.op == "placeholder":
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[o] for o in outputs) if len(outputs) > 1 else env[outputs[0]])
    graph.eliminate_dead_code()
    return fx.GraphModule(root, graph)


def build_vjp_graphs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> SplitGraphs:
    """Trace and split `model`'s score and VJP (see module doc)."""
    model = model.eval()
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    gm = trace_joint(model, example)
    # make_fx names the flattened param placeholders p_1, p_2, ... in dict order.
    names = list(params)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"][: len(names)]
    gm._ckm_params = {ph.target: params[name].detach().clone() for ph, name in zip(placeholders, names)}
    return split_joint(gm, len(example))


