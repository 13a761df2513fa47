"""Site discovery with torch.fx."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from approx.sites import trace_sites


class TwiceAndFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.relu1 = nn.ReLU()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        x = self.relu1(self.linear(x))
        x = self.relu1(x - 0.5)  # the same module again: a second site
        x = F.relu(x + 0.1)
        x = torch.relu(x - 0.2)
        x = x.relu()
        x = self.act(x)
        x = F.leaky_relu(x, 0.3)
        x = torch.sigmoid(x) + F.gelu(x) + torch.tanh(x) + F.silu(x) + F.elu(x, alpha=0.5)
        return x


class InplaceResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.linear(x)
        y = self.relu(h)
        return y + h  # h was overwritten by the in-place ReLU: 2 * relu(linear(x))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:
            return self.relu(x)
        return x


def test_sites_module_twice_and_functional_calls():
    _, sites = trace_sites(TwiceAndFunctional())
    names = [site.name for site in sites]
    assert names == [
        "relu1",
        "relu1@2",
        "relu",
        "relu@2",
        "relu@3",
        "act",
        "leaky_relu",
        "sigmoid",
        "gelu",
        "tanh",
        "silu",
        "elu",
    ]
    functions = [site.function for site in sites]
    assert functions[:5] == ["relu"] * 5
    assert [site.kind for site in sites[:5]] == [
        "module",
        "module",
        "function",
        "function",
        "method",
    ]
    assert sites[5].params["negative_slope"] == 0.2
    assert sites[6].params["negative_slope"] == 0.3
    assert sites[11].params["alpha"] == 0.5
    assert [site.index for site in sites] == list(range(len(sites)))


def test_sites_names_stable_across_traces():
    first = [site.name for site in trace_sites(TwiceAndFunctional())[1]]
    second = [site.name for site in trace_sites(TwiceAndFunctional())[1]]
    assert first == second


def test_sites_traced_network_computes_the_same():
    torch.manual_seed(0)
    model = TwiceAndFunctional()
    graph_module, _ = trace_sites(model)
    x = torch.randn(8, 4)
    assert torch.equal(graph_module(x), model(x))


def test_sites_inplace_keeps_semantics():
    torch.manual_seed(0)
    model = InplaceResidual()
    graph_module, sites = trace_sites(model)
    assert sites[0].inplace
    x = torch.randn(5, 3)
    with torch.no_grad():
        expected = 2 * torch.relu(model.linear(x))
        assert torch.allclose(graph_module(x), expected)


def test_sites_untraceable_network_names_class():
    with pytest.raises(ValueError, match="DataDependent") as error:
        trace_sites(DataDependent())
    assert "torch.fx" in str(error.value)


def test_sites_zero_sites_is_error():
    with pytest.raises(ValueError, match="no nonlinearity"):
        trace_sites(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_sites_reference_network_names(trained_lenet5):
    _, sites = trace_sites(trained_lenet5)
    assert [site.name for site in sites] == ["relu1", "relu2", "relu3", "relu4"]
