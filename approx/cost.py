"""Homomorphic-encryption cost of the polynomials that replace the nonlinearities.

Evaluation scheme counted here (exact for this scheme, not for Paterson-Stockmeyer or
baby-step giant-step evaluation): the powers ``x^2 ... x^d`` are computed by the
lowest-depth product tree, ``x^k = x^(2^j) * x^(k - 2^j)`` with ``2^j`` the largest power
of two below ``k`` (``x^(2^j)`` by squaring), and the polynomial is the sum
``a_0 + a_1 x + ... + a_d x^d`` with plaintext coefficients. Then, for degree ``d``:

* non-scalar (ciphertext-ciphertext) multiplications: ``d - 1`` for ``d >= 2``, else 0
  (one product per power ``x^2 ... x^d``);
* multiplicative depth (ciphertext-ciphertext levels): ``ceil(log2 d)`` for ``d >= 1``,
  0 for ``d <= 1`` (``x^k`` has depth ``ceil(log2 k)`` and ``x^d`` is the deepest power);
* scalar (plaintext-ciphertext) multiplications: ``d`` (coefficients ``a_1 ... a_d``);
* ``ckks_depth``: the depth plus one level for the scalar multiplications when ``d >= 1``,
  because in CKKS multiplying by a non-integer plaintext constant needs a rescale.

Per-channel polynomials of one site run in the SIMD slots of the same ciphertexts, with
per-slot coefficients as plaintext vectors, so a site costs what its highest degree costs.
Counts are per evaluation of a site on one ciphertext; the number of ciphertexts a
tensor needs depends on the packing and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.fx

from approx.sites import SLOTS_ATTRIBUTE


def he_cost(degree: int) -> dict[str, int]:
    """Return the HE cost of evaluating one polynomial of ``degree`` (scheme above).

    Returns:
        ``depth``, ``nonscalar_multiplications``, ``scalar_multiplications``,
        ``ckks_depth``.

    Raises:
        TypeError: ``degree`` is not an integer.
        ValueError: ``degree`` is negative.
    """
    if isinstance(degree, bool) or not isinstance(degree, int):
        raise TypeError(f"degree must be an integer, got {degree!r}")
    if degree < 0:
        raise ValueError(f"degree must be at least 0, got {degree}")
    # ceil(log2 d) for d >= 1 is the bit length of d - 1.
    depth = (degree - 1).bit_length() if degree >= 1 else 0
    return {
        "depth": depth,
        "nonscalar_multiplications": max(degree - 1, 0),
        "scalar_multiplications": degree,
        "ckks_depth": depth + 1 if degree >= 1 else 0,
    }


def network_he_cost(
    degrees: Mapping[str, int],
    *,
    graph_module: torch.fx.GraphModule | None = None,
    site_indices: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """Return the HE cost of every site and of the whole network.

    Args:
        degrees: Site name -> degree of its polynomial (the highest channel degree).
        graph_module: The network traced by ``approx.sites.trace_sites``. With it, the
            network depth is the largest sum of site depths along any path of the graph
            (sites on parallel branches do not add up); without it, sites are assumed to
            run one after the other and their depths add up.
        site_indices: Site name -> slot index, required with ``graph_module``.

    Returns:
        ``sites`` (name -> he_cost), ``depth`` and ``ckks_depth`` (along the deepest path),
        ``nonscalar_multiplications`` and ``scalar_multiplications`` (sums over sites).
    """
    per_site = {name: he_cost(int(degree)) for name, degree in degrees.items()}
    total_nonscalar = sum(cost["nonscalar_multiplications"] for cost in per_site.values())
    total_scalar = sum(cost["scalar_multiplications"] for cost in per_site.values())
    if graph_module is None:
        depth = sum(cost["depth"] for cost in per_site.values())
        ckks_depth = sum(cost["ckks_depth"] for cost in per_site.values())
    else:
        if site_indices is None:
            raise ValueError("site_indices is required with graph_module")
        depth = _deepest_path(graph_module, site_indices, per_site, "depth")
        ckks_depth = _deepest_path(graph_module, site_indices, per_site, "ckks_depth")
    return {
        "sites": per_site,
        "depth": depth,
        "ckks_depth": ckks_depth,
        "nonscalar_multiplications": total_nonscalar,
        "scalar_multiplications": total_scalar,
    }


def _deepest_path(
    graph_module: torch.fx.GraphModule,
    site_indices: Mapping[str, int],
    per_site: Mapping[str, dict[str, int]],
    key: str,
) -> int:
    """Return the largest sum of site costs ``key`` along any path through the graph."""
    cost_of_target = {
        f"{SLOTS_ATTRIBUTE}.{site_indices[name]}": cost[key] for name, cost in per_site.items()
    }
    depth_of: dict[torch.fx.Node, int] = {}
    deepest = 0
    for node in graph_module.graph.nodes:
        inputs = node.all_input_nodes
        depth = max((depth_of[source] for source in inputs), default=0)
        if node.op == "call_module":
            depth += cost_of_target.get(str(node.target), 0)
        depth_of[node] = depth
        deepest = max(deepest, depth)
    return deepest
