"""Polynomial activation modules that replace a site's nonlinearity.

A ``PolynomialActivation`` evaluates one polynomial per site or one per channel
(dimension 1 of the input) in the input's dtype and on its device. Each polynomial is
given on its fitting range ``[lo, hi]`` by its Chebyshev coefficients in
``t = (2x - lo - hi) / (hi - lo)``.

Evaluation scheme: the module converts the Chebyshev series once (in float64) to the
power basis of the normalised variable ``t`` and evaluates it with Horner's rule, one
fused multiply-add (``torch.addcmul``) per degree. Clenshaw's recurrence on the Chebyshev
form needs two tensor operations per degree, so Horner is about twice as fast on the
memory-bound activation tensors. Horner on the power form of ``x`` itself is unstable:
for a range far from 0 (e.g. [10, 11]) the coefficients grow like ``(hi / (hi - lo))^d``
and cancel. In ``t`` on [-1, 1] the power coefficients of a degree-``d`` Chebyshev series
are bounded by ``2^(d-1)`` times the Chebyshev coefficients, so float32 rounding stays near
``2^d * 6e-8`` (about 1.5e-5 relative for degree 8), far below minimax fit errors.

Outside ``[lo, hi]`` the module returns the polynomial's true value, as encrypted
inference would compute it; no clipping. It counts, per channel, how many inputs fell
outside the range since the last ``reset_counts``. In batches of ``COUNT_STRIDE`` samples or
more it counts every ``COUNT_STRIDE``-th sample only, so the share outside is an estimate
from a systematic sample of the batch; counting every value costs about a fifth of the
polynomial's evaluation time, which a search pays on every trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.polynomial import chebyshev as np_chebyshev
from torch import nn

# Stride over the batch dimension of the samples whose inputs are counted.
COUNT_STRIDE = 8


class PolynomialActivation(nn.Module):
    """One polynomial per site (``channels=1``) or per channel of dimension 1.

    Args:
        chebyshev: Chebyshev coefficients, shape (C, d + 1) or (d + 1,) for one polynomial;
            rows of lower degree are padded with zeros.
        ranges: Fitting ranges ``[lo, hi]`` per polynomial, shape (C, 2) or (2,).
        inplace: Write the result into the input tensor, as an in-place activation does.
        count_outside: Count the inputs outside each range (costs two passes over the
            input; turn off while training).

    The coefficients are kept in float64 buffers; ``forward`` casts the small coefficient
    tensors to the input's dtype, so the module follows ``.to(device)`` and works in
    float32, float64 or bfloat16 networks.
    """

    def __init__(
        self,
        chebyshev: np.ndarray | Sequence,
        ranges: np.ndarray | Sequence,
        *,
        inplace: bool = False,
        count_outside: bool = True,
    ) -> None:
        super().__init__()
        chebyshev = np.atleast_2d(np.asarray(chebyshev, dtype=np.float64))
        ranges = np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
        if chebyshev.shape[0] != ranges.shape[0]:
            raise ValueError(
                f"got {chebyshev.shape[0]} coefficient rows but {ranges.shape[0]} ranges"
            )
        if not (np.all(np.isfinite(chebyshev)) and np.all(np.isfinite(ranges))):
            raise ValueError("polynomial coefficients and ranges must be finite")
        if np.any(ranges[:, 1] <= ranges[:, 0]):
            bad = ranges[ranges[:, 1] <= ranges[:, 0]][0]
            raise ValueError(f"each range needs lo < hi, got [{bad[0]}, {bad[1]}]")
        lo, hi = ranges[:, 0], ranges[:, 1]
        # t = x * scale + shift maps [lo, hi] onto [-1, 1].
        scale = 2.0 / (hi - lo)
        shift = -(hi + lo) / (hi - lo)
        power = np.stack([_chebyshev_to_power(row) for row in chebyshev])  # (C, d + 1)
        self.channels = chebyshev.shape[0]
        self.degree = chebyshev.shape[1] - 1
        self.inplace = inplace
        self.count_outside = count_outside
        self.register_buffer("chebyshev", torch.from_numpy(chebyshev.copy()))
        self.register_buffer("ranges", torch.from_numpy(ranges.copy()))
        self.register_buffer("power", torch.from_numpy(power), persistent=False)
        self.register_buffer("scale", torch.from_numpy(scale), persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift), persistent=False)
        self.register_buffer(
            "outside", torch.zeros(self.channels, dtype=torch.int64), persistent=False
        )
        self.seen = 0  # inputs per channel counted since reset_counts

    def reset_counts(self) -> None:
        """Set the outside-range counters to zero."""
        self.outside.zero_()
        self.seen = 0

    def outside_share(self) -> np.ndarray:
        """Return, per polynomial, the fraction of counted inputs outside its range."""
        if self.seen == 0:
            return np.zeros(self.channels)
        return self.outside.cpu().numpy() / self.seen

    def _shaped(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Cast per-channel values (C,) to x's dtype, shaped to broadcast along dimension 1."""
        values = values.to(dtype=x.dtype, device=x.device)
        if self.channels == 1:
            return values.reshape(())
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not have {self.channels} channels in "
                "dimension 1"
            )
        return values.reshape(1, self.channels, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._shaped(self.scale, x)
        shift = self._shaped(self.shift, x)
        power = self.power.to(dtype=x.dtype, device=x.device)  # (C, d + 1)
        t = torch.addcmul(shift, x, scale)  # t = x * scale + shift, same shape as x
        if self.count_outside:
            self._count(t)
        if self.degree == 0:
            y = self._shaped(power[:, 0], x).expand_as(t).clone()
        elif torch.is_grad_enabled() and t.requires_grad:
            y = torch.addcmul(
                self._shaped(power[:, self.degree - 1], x),
                t,
                self._shaped(power[:, self.degree], x),
            )
            for k in range(self.degree - 2, -1, -1):
                y = torch.addcmul(self._shaped(power[:, k], x), y, t)
        else:
            # Without autograd, Horner runs in place on one buffer: no allocation per degree.
            y = torch.addcmul(
                self._shaped(power[:, self.degree - 1], x),
                t,
                self._shaped(power[:, self.degree], x),
            )
            for k in range(self.degree - 2, -1, -1):
                torch.addcmul(self._shaped(power[:, k], x), y, t, out=y)
        if self.inplace:
            return x.copy_(y)
        return y

    @torch.no_grad()
    def _count(self, t: torch.Tensor) -> None:
        if t.dim() > 0 and t.shape[0] >= COUNT_STRIDE:
            t = t[::COUNT_STRIDE]
        # |t| > 1 as 0.0/1.0 in place (NaN compares false, infinities count as outside).
        outside = t.detach().abs().gt_(1.0)
        batch = outside.shape[0] if outside.dim() > 0 else 1
        channels = self.channels if outside.dim() >= 2 else 1
        # Per (sample, channel) sums stay exact in float32 below 2^24 elements.
        per_channel = outside.reshape(batch, channels, -1).sum(dim=2).sum(dim=0)
        per_channel = per_channel.to(torch.int64)
        if channels == self.channels:
            self.outside += per_channel
        else:
            self.outside += per_channel.sum()
        self.seen += t.numel() // self.channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, degree={self.degree}, inplace={self.inplace}"


def _chebyshev_to_power(coefficients: np.ndarray) -> np.ndarray:
    """Return the power-basis coefficients (ascending) of a Chebyshev series in t."""
    power = np_chebyshev.cheb2poly(coefficients)
    out = np.zeros(coefficients.shape[0])
    out[: power.shape[0]] = power
    return out


def power_coefficients(chebyshev: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Return the ascending power-basis coefficients in x of a Chebyshev series on [lo, hi].

    These are the coefficients an HE evaluation in x uses; they are ill-conditioned for
    ranges far from zero, which is why the module evaluates in the normalised variable.
    """
    series = np_chebyshev.Chebyshev(np.asarray(chebyshev, dtype=np.float64), domain=[lo, hi])
    power = series.convert(
        kind=np.polynomial.Polynomial, domain=[-1.0, 1.0], window=[-1.0, 1.0]
    ).coef
    out = np.zeros(len(chebyshev))
    out[: power.shape[0]] = power
    return out
