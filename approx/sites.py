"""Nonlinearity sites of a network, found by tracing it with ``torch.fx``.

A site is one place in the forward pass where a nonlinearity is applied: an
activation module call (``nn.ReLU``, ``nn.LeakyReLU``, ``nn.ELU``, ``nn.GELU``,
``nn.SiLU``, ``nn.Sigmoid``, ``nn.Tanh``), a functional call (``F.relu``,
``torch.relu``, ``torch.sigmoid``, ...) or a tensor method (``x.relu()``). A module
called twice is two sites.

``trace_sites`` rewrites every site node of the traced graph into a call of a slot
module ``polysearch_sites.<index>``. A slot initially contains the original
activation, so the traced network computes exactly what the original computes;
calibration and substitution replace slots, never the graph, so one trace serves
every later copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Attribute of the traced GraphModule that contains one slot module per site.
SLOTS_ATTRIBUTE = "polysearch_sites"

# Activation module class -> (function name, attributes copied into Site.params).
_MODULE_ACTIVATIONS: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    nn.ReLU: ("relu", ("inplace",)),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope", "inplace")),
    nn.ELU: ("elu", ("alpha", "inplace")),
    nn.GELU: ("gelu", ("approximate",)),
    nn.SiLU: ("silu", ("inplace",)),
    nn.Sigmoid: ("sigmoid", ()),
    nn.Tanh: ("tanh", ()),
}

# Functional target -> (function name, names of the arguments after the input, in order).
_FUNCTION_ACTIVATIONS: dict[Callable[..., Any], tuple[str, tuple[str, ...]]] = {
    F.relu: ("relu", ("inplace",)),
    torch.relu: ("relu", ()),
    F.relu_: ("relu", ()),
    torch.relu_: ("relu", ()),
    F.leaky_relu: ("leaky_relu", ("negative_slope", "inplace")),
    F.elu: ("elu", ("alpha", "inplace")),
    F.gelu: ("gelu", ("approximate",)),
    F.silu: ("silu", ("inplace",)),
    torch.sigmoid: ("sigmoid", ()),
    F.sigmoid: ("sigmoid", ()),
    torch.tanh: ("tanh", ()),
    F.tanh: ("tanh", ()),
}

# Tensor method name -> function name (``x.relu()``, ``x.sigmoid_()``, ...).
_METHOD_ACTIVATIONS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
}

# In-place functional and method forms; their sites get params["inplace"] = True.
_INPLACE_TARGETS: tuple[Any, ...] = (F.relu_, torch.relu_, "relu_", "sigmoid_", "tanh_")

# Default parameter values, filled in where a call leaves them out.
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "gelu": {"approximate": "none"},
}


@dataclass(frozen=True)
class Site:
    """One place in the forward pass where a nonlinearity is applied.

    Attributes:
        name: Stable, readable identifier: the module path for module sites (``relu1``,
            ``features.2``), the function name for functional and method calls
            (``relu``). Later calls of the same module or function get ``@2``, ``@3``...
        function: Activation name as in ``approx.functions.ACTIVATIONS``.
        target: Module path, function name or tensor method name that the site calls.
        params: Constant parameters of the activation (``negative_slope``, ``alpha``,
            ``approximate``, ``inplace``).
        kind: ``"module"``, ``"function"`` or ``"method"``.
        index: Position in execution order; the slot ``polysearch_sites.<index>`` of the
            traced network evaluates this site.
    """

    name: str
    function: str
    target: str
    params: dict = field(default_factory=dict)
    kind: str = "module"
    index: int = 0

    @property
    def inplace(self) -> bool:
        """Whether the original call overwrites its input."""
        return bool(self.params.get("inplace", False))

    @property
    def function_params(self) -> dict[str, Any]:
        """Parameters that change the function's values (``inplace`` left out)."""
        return {key: value for key, value in self.params.items() if key != "inplace"}


class FunctionalActivation(nn.Module):
    """Slot module that repeats a functional or tensor-method activation call."""

    def __init__(
        self, target: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        super().__init__()
        self.target = target
        self.args = args
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.target, str):
            return getattr(x, self.target)(*self.args, **self.kwargs)
        return self.target(x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        name = self.target if isinstance(self.target, str) else self.target.__name__
        return f"{name}, args={self.args}, kwargs={self.kwargs}"


def _constant_arguments(node: torch.fx.Node, context: str) -> tuple[tuple, dict]:
    """Return a site node's arguments after the input, checking that they are constants."""
    args = tuple(node.args[1:])
    kwargs = {key: value for key, value in node.kwargs.items() if key not in ("input", "self")}
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.fx.Node):
            raise ValueError(
                f"{context}: an activation parameter is computed in the forward pass "
                f"({value.name}); only constant parameters can be approximated"
            )
    return args, kwargs


def _input_node(node: torch.fx.Node, context: str) -> torch.fx.Node:
    if node.args:
        value = node.args[0]
    else:
        value = node.kwargs.get("input", node.kwargs.get("self"))
    if not isinstance(value, torch.fx.Node):
        raise ValueError(f"{context}: the activation input is not a tensor of the forward pass")
    return value


def _classify(
    graph_module: torch.fx.GraphModule, node: torch.fx.Node
) -> tuple[str, str, dict[str, Any], str] | None:
    """Return (function, target, params, kind) when ``node`` applies a nonlinearity."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        for module_class, (function, attributes) in _MODULE_ACTIVATIONS.items():
            if type(module) is module_class or (
                isinstance(module, module_class) and type(module).forward is module_class.forward
            ):
                params = {name: getattr(module, name) for name in attributes}
                return function, str(node.target), params, "module"
        return None
    if node.op == "call_function" and node.target in _FUNCTION_ACTIVATIONS:
        function, names = _FUNCTION_ACTIVATIONS[node.target]
        args, kwargs = _constant_arguments(node, f"call of {node.target.__name__}")
        params = dict(zip(names, args, strict=False))
        params.update(kwargs)
        if node.target in _INPLACE_TARGETS:
            params["inplace"] = True
        return (
            function,
            node.target.__name__,
            {**_DEFAULT_PARAMS.get(function, {}), **params},
            ("function"),
        )
    if node.op == "call_method" and node.target in _METHOD_ACTIVATIONS:
        function = _METHOD_ACTIVATIONS[node.target]
        _constant_arguments(node, f"call of Tensor.{node.target}")
        params = {"inplace": True} if node.target in _INPLACE_TARGETS else {}
        return function, str(node.target), params, "method"
    return None


def _slot_for(graph_module: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module:
    """Build the slot module that evaluates the original activation of ``node``."""
    if node.op == "call_module":
        return graph_module.get_submodule(node.target)
    args, kwargs = _constant_arguments(node, f"node {node.name}")
    return FunctionalActivation(node.target, args, kwargs)


def symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    """Trace ``model`` with ``torch.fx``, raising ValueError when tracing fails."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure is reported the same way
        raise ValueError(
            f"cannot trace network {type(model).__name__} with torch.fx: "
            f"{type(error).__name__}: {error}. Its forward pass must not branch on tensor "
            "values; move data-dependent control flow out of forward or into a leaf module"
        ) from error


def trace_sites(model: nn.Module) -> tuple[torch.fx.GraphModule, list[Site]]:
    """Trace ``model`` and return the traced network with a slot per site, and the sites.

    The returned GraphModule shares its parameters and buffers with ``model`` and computes
    the same outputs. Every site node is rewritten into a call of the slot module
    ``polysearch_sites.<index>``; the slot contains the original activation module, or a
    module that repeats the original functional call.

    Args:
        model: The network. Its forward pass must be traceable by ``torch.fx``.

    Returns:
        The traced network and its sites in execution order (names unique and stable for
        the same network).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: tracing fails (the message names the network class and the tracing
            error), a site has a parameter computed in the forward pass, or the network
            contains no nonlinearity.
    """
    graph_module = symbolic_trace(model)
    if hasattr(graph_module, SLOTS_ATTRIBUTE):
        raise ValueError(
            f"network {type(model).__name__} already has an attribute {SLOTS_ATTRIBUTE!r}; "
            "pass the original network, not an approximated one"
        )
    graph = graph_module.graph
    sites: list[Site] = []
    slots: list[nn.Module] = []
    site_nodes: list[torch.fx.Node] = []
    calls_per_name: dict[str, int] = {}
    for node in graph.nodes:
        classified = _classify(graph_module, node)
        if classified is None:
            continue
        function, target, params, kind = classified
        base = target if kind == "module" else function
        calls_per_name[base] = calls_per_name.get(base, 0) + 1
        count = calls_per_name[base]
        name = base if count == 1 else f"{base}@{count}"
        site = Site(
            name=name,
            function=function,
            target=target,
            params=params,
            kind=kind,
            index=len(sites),
        )
        slots.append(_slot_for(graph_module, node))
        _input_node(node, f"site {name}")
        site_nodes.append(node)
        sites.append(site)
    if not sites:
        raise ValueError(
            f"network {type(model).__name__} contains no nonlinearity to approximate "
            f"(looked for modules {', '.join(c.__name__ for c in _MODULE_ACTIVATIONS)} and "
            "their functional forms)"
        )
    graph_module.add_module(SLOTS_ATTRIBUTE, nn.ModuleList(slots))
    for site, node in zip(sites, site_nodes, strict=True):
        # Read the input now: rewriting an earlier site may have replaced it.
        input_node = _input_node(node, f"site {site.name}")
        with graph.inserting_after(node):
            slot_call = graph.call_module(f"{SLOTS_ATTRIBUTE}.{site.index}", args=(input_node,))
        node.replace_all_uses_with(slot_call)
        graph.erase_node(node)
    graph.lint()
    graph_module.recompile()
    logger.debug(
        "traced %s: %d sites %s", type(model).__name__, len(sites), [site.name for site in sites]
    )
    return graph_module, sites


def site_slots(graph_module: torch.fx.GraphModule) -> nn.Module:
    """Return the container of slot modules of a network traced by ``trace_sites``."""
    try:
        return getattr(graph_module, SLOTS_ATTRIBUTE)
    except AttributeError:
        raise ValueError(
            f"{type(graph_module).__name__} has no site slots; trace it with trace_sites first"
        ) from None


def with_slots(
    graph_module: torch.fx.GraphModule, replacements: dict[int, nn.Module]
) -> torch.fx.GraphModule:
    """Return a copy of a traced network whose slots ``replacements`` are swapped.

    The copy shares every parameter, buffer and other module with ``graph_module``; only
    its slot container is new, so ``graph_module`` itself is left unchanged.
    """
    slots = site_slots(graph_module)
    new_slots = nn.ModuleList(list(slots))
    for index, module in replacements.items():
        if not 0 <= index < len(new_slots):
            raise ValueError(f"site index {index} out of range 0..{len(new_slots) - 1}")
        new_slots[index] = module
    # object.__new__ keeps the instance's generated class, which holds the compiled forward.
    copy = object.__new__(type(graph_module))
    copy.__dict__ = dict(graph_module.__dict__)
    copy._modules = dict(graph_module._modules)
    copy._modules[SLOTS_ATTRIBUTE] = new_slots
    copy._parameters = dict(graph_module._parameters)
    copy._buffers = dict(graph_module._buffers)
    return copy
