"""Configurations: everything needed to rebuild an approximated network.

A configuration stores, per site and channel, the degree, percentile, range and
coefficients (power basis in x, and the Chebyshev form the polynomial modules
evaluate), plus the strategy, the accuracy it reached and, for ``stepwise-retrain``,
a reference to the retrained weights. It is saved as JSON (written atomically); the
retrained weights go to a ``.pt`` file beside it (a plain state dict, loaded with
``torch.load(weights_only=True)``, checked against its SHA-256 recorded in the JSON).

``Configuration.build(original_model)`` traces a copy of the original network,
substitutes the stored polynomials and loads the stored weights; it never refits, so
the rebuilt network computes what the approximated one computed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from approx.config_checks import check_configuration_data
from approx.sites import SLOTS_ATTRIBUTE, trace_sites
from approx.substitute import SiteReport, substitute

if TYPE_CHECKING:
    from approx.strategies import ApproximationReport

FORMAT = "polysearch-configuration"
VERSION = 1


def network_weights(network: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Return a CPU copy of a traced network's state dict without its site slots."""
    prefix = f"{SLOTS_ATTRIBUTE}."
    return {
        key: value.detach().to("cpu", copy=True)
        for key, value in network.state_dict().items()
        if not key.startswith(prefix)
    }


def write_atomic(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: The folder does not exist.
    """
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another path or allow overwriting")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        os.chmod(temporary, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """Return the process's umask (reading it requires setting it, so it is set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Configuration:
    """An approximated network's settings, polynomials and (optionally) retrained weights.

    Attributes:
        strategy, granularity: How the polynomials were found.
        network: Class name of the original network, checked by ``build``.
        sites: One SiteReport per substituted site, in execution order.
        accuracy: Validation accuracy (%) the approximated network reached.
        retrain: Retraining options, for ``stepwise-retrain``.
        weights: Retrained weights (state dict without site slots), or None.
        metadata: Free-form JSON values (e.g. the checkpoint path, test accuracy).
    """

    strategy: str
    granularity: str
    network: str
    sites: list[SiteReport]
    accuracy: float | None = None
    retrain: dict | None = None
    weights: dict[str, torch.Tensor] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_report(
        cls,
        report: ApproximationReport,
        *,
        network: str,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> Configuration:
        return cls(
            strategy=report.strategy,
            granularity=report.granularity,
            network=network,
            sites=copy.deepcopy(report.sites),
            accuracy=report.accuracy,
            retrain=report.retrain,
            weights=weights,
        )

    def to_dict(self, *, weights_file: str | None = None, weights_sha256: str | None = None):
        """Return the JSON form (weights only by file reference)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "network": self.network,
            "strategy": self.strategy,
            "granularity": self.granularity,
            "accuracy": self.accuracy,
            "retrain": self.retrain,
            "weights": None
            if weights_file is None
            else {"file": weights_file, "sha256": weights_sha256},
            "metadata": self.metadata,
            "sites": [site.to_dict() for site in self.sites],
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the configuration to ``path`` (JSON) and its weights beside it.

        The weights, if any, go to ``<stem>.weights.pt`` in the same folder, written
        before the JSON, so a JSON file never references weights that are missing.

        Raises:
            ValueError: ``path`` or the weights file exists and ``overwrite`` is False.
            FileNotFoundError: The folder does not exist.
        """
        path = Path(path)
        weights_file = digest = None
        if self.weights is not None:
            weights_path = path.with_name(f"{path.stem}.weights.pt")
            if path.exists() and not overwrite:
                raise ValueError(
                    f"{path} already exists; choose another path or allow overwriting"
                )
            buffer = io.BytesIO()
            torch.save(self.weights, buffer)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            write_atomic(weights_path, data, overwrite=overwrite)
            weights_file = weights_path.name
        text = json.dumps(
            self.to_dict(weights_file=weights_file, weights_sha256=digest),
            indent=2,
            allow_nan=False,
        )
        write_atomic(path, (text + "\n").encode(), overwrite=overwrite)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Configuration:
        """Read a configuration written by ``save``.

        Raises:
            FileNotFoundError: ``path`` or its weights file is missing.
            ValueError: The file is not a valid configuration (the message names the site,
                channel and field of an invalid value), or the weights file does not match
                its recorded SHA-256.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file {path} not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a valid JSON configuration: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a polysearch configuration (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(
                f"{path} has configuration version {data.get('version')!r}; this polysearch "
                f"reads version {VERSION}"
            )
        check_configuration_data(data, path)
        try:
            configuration = cls(
                strategy=str(data["strategy"]),
                granularity=str(data["granularity"]),
                network=str(data["network"]),
                sites=[SiteReport.from_dict(item) for item in data["sites"]],
                accuracy=None if data.get("accuracy") is None else float(data["accuracy"]),
                retrain=data.get("retrain"),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"{path}: invalid configuration entry: {error!r}") from None
        reference = data.get("weights")
        if reference is not None:
            configuration.weights = _load_weights(path, reference)
        return configuration

    def build(self, original_model: nn.Module) -> torch.fx.GraphModule:
        """Return the approximated network rebuilt from a copy of ``original_model``.

        ``original_model`` is left unchanged. The result is in evaluation mode.

        Raises:
            ValueError: The network class, a site name, function or channel count differs
                from the configuration, or the weights do not fit the network.
        """
        if type(original_model).__name__ != self.network:
            raise ValueError(
                f"the configuration is for network {_network_name(self.network)}, got "
                f"{_network_name(type(original_model).__name__)}"
            )
        graph_module, sites = trace_sites(copy.deepcopy(original_model))
        by_name = {site.name: site for site in sites}
        for report in self.sites:
            site = by_name.get(report.name)
            if site is None:
                raise ValueError(
                    f"the configuration has site {report.name!r}, which the network lacks; "
                    f"its sites are {', '.join(by_name)}"
                )
            if site.function != report.function:
                raise ValueError(
                    f"site {report.name} applies {site.function} but the configuration "
                    f"approximates {report.function}"
                )
        if self.weights is not None:
            result = graph_module.load_state_dict(self.weights, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith(SLOTS_ATTRIBUTE)]
            if missing or result.unexpected_keys:
                raise ValueError(
                    "the stored weights do not fit the network: missing "
                    f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}"
                )
        network, modules = substitute(
            graph_module, sites, {report.name: report for report in self.sites}
        )
        for report in self.sites:
            channels = len(report.channels)
            shape = report.item_shape
            if channels > 1 and shape and shape[0] != channels:
                raise ValueError(
                    f"site {report.name} has {channels} channel polynomials but inputs of "
                    f"shape {shape}"
                )
        network.eval()
        return network


def _network_name(class_name: str) -> str:
    """Return the command-line name (``cnn2``) of a built-in network class, else the class name."""
    from models.networks import NETWORKS

    for name, factory in NETWORKS.items():
        if getattr(factory, "__name__", None) == class_name:
            return name
    return class_name


def _load_weights(path: Path, reference: Mapping) -> dict[str, torch.Tensor]:
    try:
        name = str(reference["file"])
        expected = str(reference["sha256"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: invalid weights reference {reference!r}") from None
    if Path(name).name != name:
        raise ValueError(f"{path}: the weights file {name!r} must lie beside the configuration")
    weights_path = path.with_name(name)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"weights file {weights_path} referenced by {path} not found; keep it beside the "
            "configuration"
        )
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{weights_path} does not match the SHA-256 recorded in {path}")
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"cannot read weights file {weights_path}: {error}") from None
    if not isinstance(weights, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in weights.items()
    ):
        raise ValueError(f"{weights_path} is not a state dict of tensors")
    return weights
