"""The conversion as a chain of small transforms, each ``apply(model) -> model`` on a shared :class:`SurgeryState`.

``SwapConvs`` (convs > 1×1 → NJetConv2d, 1×1 strided convs → stride 1), ``SwapPools`` (strided max/avg pool modules
→ stride 1), ``FunctionalPools`` (``F.max_pool2d`` / ``F.avg_pool2d`` calls), ``PlaceSubsampling`` (SafeSubsample
after/before each point, grouped at joins, MatchSize where grouping cannot guarantee equal sizes). Modules in the
fx graph are replaced in place (same qualified name); new modules get sibling names (``<conv>_subsample``). Convs
and pools the graph cannot see (inside timm's leaf modules, or in an untraceable model) are swapped by name and a
strided one becomes an ``nn.Sequential`` (``conv``/``pool`` + ``subsample``) at its old name.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import fx, nn

from njet_layers import MatchSize, NJetConv2d, SafeSubsample, safe_output_size

from ..report import LayerRecord, SubsampleRecord
from .basis_choice import layer_basis
from .convs import ConvPlan, kernel_radius, plan_conv
from .joins import analyse_joins
from .modules import PadSame
from .pools import POOL_FUNCTIONS, PoolPlan, plan_pool_call, plan_pool_module, stride1_pool
from .selection import order_for
from .state import SIZES, Point, SurgeryState

__all__ = ["FunctionalPools", "PlaceSubsampling", "SwapConvs", "SwapPools", "Transform", "finalize_subsampling"]

_ROUNDINGS = ("ceil", "floor", "round")


class Transform:
    """One step of the surgery (Brevitas-style): ``apply(model) -> model``."""

    def __init__(self, state: SurgeryState) -> None:
        self.state = state

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError


def _type_name(m: nn.Module) -> str:
    return type(m).__name__


def _nodes_calling(state: SurgeryState, name: str) -> list[fx.Node]:
    if state.gm is None:
        return []
    return [n for n in state.gm.graph.nodes if n.op == "call_module" and n.target == name]


def choose_rounding(plan, stride: int, before: bool = False) -> tuple[str, bool]:
    """The rounding under which ``rounding(stride-1 size / stride)`` equals the original size on most input sizes
    (all of them when exact is True)."""
    best, best_hits, total = "ceil", -1, 0
    for rounding in _ROUNDINGS:
        hits = total = 0
        for axis in (0, 1):
            for n in SIZES:
                want = plan.out_size(n, axis)
                m = n if before else plan.stride1_size(n, axis)
                if want < 1 or m < 1:
                    continue
                total += 1
                hits += safe_output_size(m, float(stride), rounding) == want
        if hits > best_hits:
            best, best_hits = rounding, hits
    return best, best_hits == total


class SwapConvs(Transform):
    """Every selected conv with a kernel larger than 1×1 → NJetConv2d with the conv's bias and a starting σ; its
    α and σ are filled afterwards by :mod:`njet_convert.fitting` (or loaded from a checkpoint)."""

    def apply(self, model: nn.Module) -> nn.Module:
        st = self.state
        for name, conv in list(model.named_modules()):
            if not isinstance(conv, nn.Conv2d) or not name:
                continue
            if not st.selector(name, conv):
                st.report.skip(name, _type_name(conv), "not selected (include/exclude)")
                continue
            if tuple(conv.kernel_size) == (1, 1):
                self._pointwise(model, name, conv)
            else:
                self._convert(model, name, conv)
        return model

    def _pointwise(self, model: nn.Module, name: str, conv: nn.Conv2d) -> None:
        st = self.state
        stride = tuple(conv.stride)
        if st.cfg.subsample != "safe" or max(stride) == 1:
            return
        if stride[0] != stride[1] or tuple(conv.padding) != (0, 0) or plan_conv(conv).reason:
            st.report.skip(name, _type_name(conv), f"strided 1x1 conv kept (stride={stride}, padding={conv.padding})")
            return
        conv.stride = (1, 1)
        plan = ConvPlan(stride=stride, kernel_size=(1, 1))
        point = st.new_point(origin=name, kind="conv", stride=stride[0], plan=plan, before=True,
                             nodes=_nodes_calling(st, name))
        point.rounding, point.exact = choose_rounding(plan, stride[0], before=True)
        if not point.nodes:
            self._wrap(model, name, [("subsample", make_subsample(st, point, None)), ("conv", conv)], point)
            st.report.untraced.append(name)

    def _convert(self, model: nn.Module, name: str, conv: nn.Conv2d) -> None:
        st, cfg = self.state, self.state.cfg
        plan = plan_conv(conv)
        if plan.reason:
            st.report.skip(name, _type_name(conv), plan.reason)
            return
        safe = cfg.subsample == "safe" and max(plan.stride) > 1
        note = "weight standardisation folded into the fit" if plan.standardised else ""
        note += " TF-SAME padding by PadSame" if plan.pad_same else ""
        if max(plan.dilation) > 1:
            note += f" dilation {plan.dilation}: sigma covers the dilated support"
        if safe and plan.stride[0] != plan.stride[1]:
            safe, note = False, f"{note} anisotropic stride {plan.stride} kept"
        layer = self._build(name, conv, plan, (1, 1) if safe else plan.stride)
        nodes = _nodes_calling(st, name)
        pad = PadSame(plan.kernel_size, plan.stride, plan.dilation) if plan.pad_same else None
        st.originals[name] = conv
        st.plans[name] = plan
        point = None
        if safe:
            point = st.new_point(origin=name, kind="conv", stride=plan.stride[0], plan=plan, nodes=nodes)
            point.rounding, point.exact = choose_rounding(plan, plan.stride[0])
        if nodes:
            model.set_submodule(name, layer)
            if pad is not None:
                pad_name = st.unique_name(name + "_pad")
                model.add_submodule(pad_name, pad)
                for node in nodes:
                    _insert_before(st.gm, node, pad_name)
            njet_name, how = name, "graph"
        elif pad is None and point is None:
            model.set_submodule(name, layer)
            njet_name, how = name, "module"
            st.report.untraced.append(name)
        else:
            njet_name, how = name + ".conv", "module"
            parts = ([("pad", pad)] if pad is not None else []) + [("conv", layer)]
            if point is not None:
                parts.append(("subsample", make_subsample(st, point, layer)))
            if point is not None:
                point.njet = njet_name
            self._wrap(model, name, parts, point)
            st.report.untraced.append(name)
        if point is not None:
            point.njet = njet_name
        st.pairs[njet_name] = name
        if plan.pad_same:
            st.no_calibration.add(njet_name)
        st.report.layers.append(LayerRecord(
            njet_name, _type_name(conv), tuple(conv.weight.shape), "NJetConv2d", float(layer.sigma.detach()),
            layer.kernel_size, float("nan"), plan.stride, plan.dilation, plan.crop, how, note.strip(),
            order=layer.order))

    def _build(self, name: str, conv: nn.Conv2d, plan: ConvPlan, stride) -> NJetConv2d:
        """The NJetConv2d that takes ``conv``'s place: its basis, channels, groups, bias, crop and mode; σ starts
        where its filter just covers the kernel (or at the configured / loaded σ)."""
        cfg = self.state.cfg
        weight = conv.weight
        order, dilation = layer_basis(order_for(cfg.order, name, conv), plan, name)
        frame = plan.frame_radius if dilation == (1, 1) else kernel_radius(plan.kernel_size)
        start = cfg.sigma if cfg.sigma is not None else max(frame, 1) / cfg.k
        sigma = self.state.sigma_for.get(name, start)
        layer = NJetConv2d(conv.in_channels, conv.out_channels, order=order, sigma=sigma, k=cfg.k, groups=conv.groups,
                           bias=conv.bias is not None, stride=stride, dilation=dilation, crop=plan.crop,
                           learn_sigma=cfg.learn_sigma, device=weight.device, dtype=weight.dtype)
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias.detach())
        return layer.train(conv.training)

    def _wrap(self, model: nn.Module, name: str, parts: list, point: Point | None) -> None:
        wrapper = nn.Sequential(OrderedDict(parts))
        model.set_submodule(name, wrapper)
        if point is not None:
            point.subsample = name + ".subsample"
            point.source = point.njet
            _record_module_point(self.state, point)
            if point.njet and not point.before:
                wrapper.subsample.fuse_into(wrapper.conv)


def _record_module_point(st: SurgeryState, point: Point) -> None:
    st.strides[point.subsample] = point.stride
    st.report.subsampling.append(SubsampleRecord(
        point.subsample, point.origin, point.kind, point.stride, float("nan"), float("nan"), -1, point.source,
        point.rounding, "module", point.exact))


def make_subsample(state: SurgeryState, point: Point, source: nn.Module | None) -> SafeSubsample:
    """A SafeSubsample for ``point`` with the configured r (its shift is set by :func:`finalize_subsampling`)."""
    cfg = state.cfg
    kwargs = {"mode": cfg.interpolation, "rounding": point.rounding}
    if source is not None:
        return SafeSubsample(r=cfg.r, source=source, **kwargs)
    return SafeSubsample(r=cfg.r, sigma=cfg.sigma if cfg.sigma is not None else 1.0, **kwargs)


class SwapPools(Transform):
    """Strided max/avg pool modules → stride-1 pools (the SafeSubsample comes from :class:`PlaceSubsampling`)."""

    def apply(self, model: nn.Module) -> nn.Module:
        st = self.state
        if st.cfg.subsample != "safe":
            return model
        for name, pool in list(model.named_modules()):
            if not isinstance(pool, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd) or not name:
                continue
            if not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
                continue
            stride = pool.stride if pool.stride is not None else pool.kernel_size
            if max((stride, stride) if isinstance(stride, int) else stride) == 1:
                continue
            if not st.selector(name, pool):
                st.report.skip(name, _type_name(pool), "not selected (include/exclude)")
                continue
            plan = plan_pool_module(pool)
            if plan is None:
                st.report.skip(name, _type_name(pool), "strided pool of an unsupported type kept")
                continue
            self.replace(model, name, plan, pool)
        return model

    def replace(self, model: nn.Module, name: str, plan: PoolPlan, pool: nn.Module) -> None:
        st = self.state
        if plan.reason or plan.stride[0] != plan.stride[1]:
            st.report.skip(name, _type_name(pool), plan.reason or f"anisotropic stride {plan.stride} kept")
            return
        nodes = _nodes_calling(st, name)
        new = stride1_pool(plan).train(pool.training)
        point = st.new_point(origin=name, kind="pool", stride=plan.stride[0], plan=plan, nodes=nodes)
        point.rounding, point.exact = choose_rounding(plan, plan.stride[0])
        if nodes:
            model.set_submodule(name, new)
            return
        wrapper = nn.Sequential(OrderedDict([("pool", new), ("subsample", make_subsample(st, point, None))]))
        model.set_submodule(name, wrapper)
        point.subsample = name + ".subsample"
        _record_module_point(st, point)
        st.report.untraced.append(name)


class FunctionalPools(Transform):
    """``F.max_pool2d`` / ``F.avg_pool2d`` calls with stride > 1 in the graph → points (rewritten when placed)."""

    def apply(self, model: nn.Module) -> nn.Module:
        st = self.state
        if st.cfg.subsample != "safe" or st.gm is None:
            return model
        for node in list(st.gm.graph.nodes):
            if node.op != "call_function" or node.target not in POOL_FUNCTIONS:
                continue
            plan = plan_pool_call(node)
            label = f"{node.name} ({node.target.__name__})"
            if isinstance(plan, str):
                st.report.skip(node.name, node.target.__name__, plan)
                continue
            if max(plan.stride) == 1:
                continue
            if not st.selector(node.name, None):
                st.report.skip(label, node.target.__name__, "not selected (include/exclude)")
                continue
            if plan.reason or plan.stride[0] != plan.stride[1]:
                st.report.skip(label, node.target.__name__, plan.reason or f"anisotropic stride {plan.stride} kept")
                continue
            point = st.new_point(origin=node.name, kind="functional pool", stride=plan.stride[0], plan=plan,
                                 nodes=[node])
            point.rounding, point.exact = choose_rounding(plan, plan.stride[0])
        return model


class PlaceSubsampling(Transform):
    """Group the points at joins, put a SafeSubsample at each (linked to its group's NJetConv2d), MatchSize where
    grouping cannot keep a join consistent."""

    def apply(self, model: nn.Module) -> nn.Module:
        st = self.state
        self._link_module_points(model)
        if st.gm is None:
            return model
        graph_points = [p for p in st.points if p.nodes]
        if not graph_points:
            return model
        self.replaced: dict[fx.Node, fx.Node] = {}
        groups = self._groups(graph_points)
        modules = dict(model.named_modules())
        for gid, members in groups.items():
            leader = next((p.njet for p in members if p.njet), None) or _upstream_njet(members[0].nodes[0], modules)
            for p in members:
                p.source = leader
                self._place(model, p, modules.get(leader) if leader else None, gid)
        self._guard(model)
        st.gm.graph.lint()
        st.gm.recompile()
        return model

    def _link_module_points(self, model: nn.Module) -> None:
        """Points swapped by name inside one block (the enclosing leaf module, or the parent when the model was not
        traced) with the same stride share the σ of the block's first strided N-Jet conv: a residual block's
        strided branch and its shortcut keep equal sizes."""
        st = self.state
        modules = dict(model.named_modules())
        blocks: dict[tuple, list[Point]] = {}
        for p in st.points:
            if p.nodes or not p.subsample:
                continue
            block = _enclosing(p.origin, st.in_graph) if st.gm is not None else p.origin.rpartition(".")[0]
            blocks.setdefault((block, p.key()), []).append(p)
        for members in blocks.values():
            leader = next((p.njet for p in members if p.njet), None)
            if leader is None or len(members) < 2:
                continue
            for p in members:
                modules[p.subsample].link(modules[leader])
                p.source = leader
                for record in st.report.subsampling:
                    if record.name == p.subsample:
                        record.source, record.group = leader, -2 - members[0].id

    def _groups(self, points: list[Point]) -> dict[int, list[Point]]:
        st = self.state
        tokens = dict(st.tokens)
        for p in points:
            for node in p.nodes:
                tokens[node] = ("point", p.id)
        self.analysis = analyse_joins(st.gm, lambda n: tokens.get(n), {p.id: p.key() for p in points},
                                      always=st.cfg.match_size == "always")
        groups: dict[int, list[Point]] = {}
        for p in points:
            groups.setdefault(self.analysis.group_of.get(p.id, p.id), []).append(p)
        return groups

    def _place(self, model: nn.Module, point: Point, source: nn.Module | None, gid: int) -> None:
        st = self.state
        name = st.unique_name(point.origin + "_subsample")
        model.add_submodule(name, make_subsample(st, point, source))
        point.subsample = name
        st.strides[name] = point.stride
        for node in point.nodes:
            if point.kind == "functional pool":
                pool_name = st.unique_name(point.origin + "_stride1")
                model.add_submodule(pool_name, stride1_pool(point.plan))
                with st.gm.graph.inserting_before(node):
                    pooled = st.gm.graph.call_module(pool_name, (node.args[0] if node.args else node.kwargs["input"],))
                    sub = st.gm.graph.call_module(name, (pooled,))
                node.replace_all_uses_with(sub)
                st.gm.graph.erase_node(node)
                self.replaced[node] = sub
            elif point.before:
                _insert_before(st.gm, node, name)
            else:
                self.replaced[node] = _insert_after(st.gm, node, name)
                if point.njet == node.target:  # the conv's output feeds this subsampling alone
                    model.get_submodule(name).fuse_into(model.get_submodule(point.njet))
        st.report.subsampling.append(SubsampleRecord(
            name, point.origin, point.kind, point.stride, float("nan"), float("nan"), gid, point.source,
            point.rounding, "graph", point.exact))

    def _guard(self, model: nn.Module) -> None:
        st = self.state
        if st.cfg.match_size == "never":
            return
        todo = list(self.analysis.mismatched) + list(self.analysis.joined_points)
        for join, other, ref in todo:
            other, ref = self.replaced.get(other, other), self.replaced.get(ref, ref)
            if join.graph is not st.gm.graph or other not in join.all_input_nodes:
                continue
            name = st.unique_name(f"match_{join.name}")
            model.add_submodule(name, MatchSize(st.cfg.interpolation))
            with st.gm.graph.inserting_before(join):
                matched = st.gm.graph.call_module(name, (other, ref))
            join.replace_input_with(other, matched)
            st.report.match_sizes.append(name)


def _insert_before(gm: fx.GraphModule, node: fx.Node, name: str) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (node.args[0],))
    node.replace_input_with(node.args[0], new)


def _insert_after(gm: fx.GraphModule, node: fx.Node, name: str) -> fx.Node:
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def _enclosing(name: str, in_graph: set[str]) -> str:
    """The graph-called (leaf) module that contains ``name``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in in_graph:
            return prefix
    return ""


def _upstream_njet(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The nearest NJetConv2d feeding ``node`` along first inputs (the layer whose resolution the map has)."""
    current = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    for _ in range(64):
        if current is None:
            return None
        if current.op == "call_module" and isinstance(modules.get(str(current.target)), NJetConv2d):
            return str(current.target)
        nxt = [a for a in current.all_input_nodes]
        current = nxt[0] if nxt else None
    return None


def finalize_subsampling(model: nn.Module, strides: dict[str, int]) -> None:
    """Shift each SafeSubsample's law so its factor equals the original stride at the current (fitted) σ₀:
    ``factor = stride * 2 ** ((sigma - sigma0) / r)`` (see :meth:`~njet_layers.SafeSubsample.start_at`)."""
    modules = dict(model.named_modules())
    for name, stride in strides.items():
        ss = modules.get(name)
        if isinstance(ss, SafeSubsample):
            ss.start_at(float(stride))
