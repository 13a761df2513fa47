"""HE cost of polynomials under the power-tree evaluation scheme."""

from __future__ import annotations

import pytest

from approx.cost import he_cost, network_he_cost
from approx.sites import trace_sites

# Hand-counted for the product tree x^k = x^(2^j) * x^(k - 2^j):
# d=2: x^2 (1 mult, depth 1). d=3: + x^3 = x^2 * x (depth 2). d=4: + x^4 = x^2 * x^2 (depth 2).
# d=5..8: + x^5 = x^4 * x, x^6 = x^4 * x^2, x^7 = x^4 * x^3, x^8 = x^4 * x^4 (depth 3).
HAND_COUNTED = {
    0: (0, 0),
    1: (0, 0),
    2: (1, 1),
    3: (2, 2),
    4: (3, 2),
    5: (4, 3),
    6: (5, 3),
    7: (6, 3),
    8: (7, 3),
}


@pytest.mark.parametrize("degree", sorted(HAND_COUNTED))
def test_cost_matches_hand_count(degree):
    multiplications, depth = HAND_COUNTED[degree]
    cost = he_cost(degree)
    assert cost["nonscalar_multiplications"] == multiplications
    assert cost["depth"] == depth
    assert cost["scalar_multiplications"] == degree
    assert cost["ckks_depth"] == (depth + 1 if degree else 0)


def test_cost_rejects_negative_degree():
    with pytest.raises(ValueError, match="degree"):
        he_cost(-1)


def test_cost_network_sums_chain(trained_cnn2):
    graph_module, sites = trace_sites(trained_cnn2)
    indices = {site.name: site.index for site in sites}
    total = network_he_cost(
        {"relu1": 2, "relu2": 8}, graph_module=graph_module, site_indices=indices
    )
    # relu2 follows relu1 on the only path, so depths add: 1 + 3.
    assert total["depth"] == 4
    assert total["nonscalar_multiplications"] == 1 + 7
    assert total["ckks_depth"] == 2 + 4
