"""Building load of the digital twin: a measured or standard profile, scaled, with noise.

A :class:`LoadModel` replays an interval series (the bundled household or commercial profile,
or a user file) scaled to an annual energy. Times outside the series are mapped onto it by
whole weeks (:func:`openbess.data.wrap_times_s`), so any simulation date works and weekdays
stay weekdays.

The optional noise is multiplicative, ``P = P_profile * max(0, 1 + sigma * n(t))``, with
``n(t)`` a standard normal value drawn at nodes every ``noise_step_s`` and interpolated
linearly between them. The draws come from a counter-based hash of ``(seed, node)``, so the
load at a given time is the same whichever order or batch it is asked in: a seeded,
reproducible "actual" load that differs from the profile a forecaster sees.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.data import read_commercial_load, read_household, read_timeseries_csv
from openbess.data.timeseries import TimesLike, sample, to_unix_s

FloatArray = npt.NDArray[np.float64]

HOURS_PER_YEAR = 8760.0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def hashed_normal(node: npt.ArrayLike, seed: int) -> FloatArray:
    """Standard normal values that depend only on ``(seed, node)`` (counter-based RNG).

    Parameters
    ----------
    node : array_like of int
        Node numbers (any int64).
    seed : int
        Seed.

    Returns
    -------
    numpy.ndarray
        Independent N(0, 1) draws, one per node, shape of ``node``.
    """
    n = np.atleast_1d(np.asarray(node, dtype=np.int64)).view(np.uint64)
    key = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    with np.errstate(over="ignore"):
        a = _splitmix64((n << np.uint64(1)) ^ key)
        b = _splitmix64(((n << np.uint64(1)) | np.uint64(1)) ^ key)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0**-53
    z: FloatArray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.reshape(np.shape(node))


def smooth_noise(time_s: npt.ArrayLike, seed: int, step_s: float) -> FloatArray:
    """Continuous noise: hashed normal draws every ``step_s`` interpolated linearly.

    Parameters
    ----------
    time_s : array_like
        Times [s, Unix UTC].
    seed : int
        Seed.
    step_s : float
        Node spacing [s], > 0.

    Returns
    -------
    numpy.ndarray
        Noise [1] (zero mean; variance 1 at the nodes, less in between).
    """
    t = np.asarray(time_s, dtype=np.float64)
    pos = t / step_s
    k = np.floor(pos)
    frac = pos - k
    k0 = k.astype(np.int64)
    out: FloatArray = hashed_normal(k0, seed) * (1.0 - frac) + hashed_normal(k0 + 1, seed) * frac
    return out


class LoadModel:
    """Building load from an interval profile, scaled to an annual energy.

    Parameters
    ----------
    profile : pandas.Series or pandas.DataFrame
        Average power per interval [W] (a DataFrame must have a ``load_w`` column), indexed by
        tz-aware interval start times, regular, without NaN.
    annual_energy_wh : float or None
        Energy per 365-day year [Wh] the profile is scaled to; None keeps it as it is.
    noise_fraction : float
        Standard deviation of the multiplicative noise [fraction], 0 for none.
    noise_step_s : float
        Correlation step of the noise [s].
    seed : int
        Seed of the noise.
    method : {"hold", "linear"}
        Read the profile as a step per interval (keeps the interval energies) or linearly
        between interval midpoints.
    wrap : bool
        Map times outside the profile onto it by whole weeks; if False they raise
        SimulationError.
    """

    def __init__(
        self,
        profile: pd.Series | pd.DataFrame,
        *,
        annual_energy_wh: float | None = None,
        noise_fraction: float = 0.0,
        noise_step_s: float = 900.0,
        seed: int = 0,
        method: Literal["hold", "linear"] = "hold",
        wrap: bool = True,
    ) -> None:
        if isinstance(profile, pd.DataFrame):
            if "load_w" not in profile.columns:
                raise ValueError(f"profile needs a 'load_w' column, has {list(profile.columns)}")
            profile = profile["load_w"]
        values = profile.to_numpy(dtype=np.float64)
        if values.size < 2:
            raise ValueError("profile needs at least two intervals")
        if np.isnan(values).any() or (values < 0.0).any():
            raise ValueError("profile must not contain NaN or negative power")
        index_s = to_unix_s(pd.DatetimeIndex(profile.index))
        steps = np.diff(index_s)
        if (steps <= 0).any() or not np.allclose(steps, steps[0]):
            raise ValueError("profile index must be regular and strictly increasing")
        if not (noise_fraction >= 0.0 and math.isfinite(noise_fraction)):
            raise ValueError(f"noise_fraction must be >= 0, got {noise_fraction!r}")
        if not noise_step_s > 0.0:
            raise ValueError(f"noise_step_s must be > 0, got {noise_step_s!r}")
        if method not in ("hold", "linear"):
            raise ValueError(f"method must be 'hold' or 'linear', got {method!r}")
        self._index_s = index_s
        self._step_s = float(steps[0])
        mean_w = float(values.mean())
        self.profile_annual_energy_wh = mean_w * HOURS_PER_YEAR
        scale = 1.0
        if annual_energy_wh is not None:
            if not (annual_energy_wh >= 0.0 and math.isfinite(annual_energy_wh)):
                raise ValueError(f"annual_energy_wh must be >= 0, got {annual_energy_wh!r}")
            if mean_w <= 0.0:
                raise ValueError("cannot scale an all-zero profile")
            scale = annual_energy_wh / self.profile_annual_energy_wh
        self._values = values * scale
        self.annual_energy_wh = mean_w * scale * HOURS_PER_YEAR
        self.noise_fraction = float(noise_fraction)
        self.noise_step_s = float(noise_step_s)
        self.seed = int(seed)
        self.method: Literal["hold", "linear"] = method
        self.wrap = wrap

    @classmethod
    def household(
        cls,
        annual_energy_wh: float | None = None,
        *,
        noise_fraction: float = 0.0,
        noise_step_s: float = 900.0,
        seed: int = 0,
        method: Literal["hold", "linear"] = "hold",
        wrap: bool = True,
    ) -> LoadModel:
        """The bundled household load (north-east France, 30 min, ~7.9 MWh/a as measured).

        Parameters
        ----------
        annual_energy_wh : float or None
            Target energy per year [Wh]; None keeps the measured level.
        noise_fraction, noise_step_s, seed, method, wrap
            As for :class:`LoadModel`.

        Returns
        -------
        LoadModel
            The model.
        """
        return cls(
            read_household()["load_w"],
            annual_energy_wh=annual_energy_wh,
            noise_fraction=noise_fraction,
            noise_step_s=noise_step_s,
            seed=seed,
            method=method,
            wrap=wrap,
        )

    @classmethod
    def commercial(
        cls,
        annual_energy_wh: float | None = 400e6,
        *,
        noise_fraction: float = 0.0,
        noise_step_s: float = 900.0,
        seed: int = 0,
        method: Literal["hold", "linear"] = "hold",
        wrap: bool = True,
    ) -> LoadModel:
        """The bundled commercial profile (BDEW G25, 15 min), default 400 MWh/a.

        Parameters
        ----------
        annual_energy_wh : float or None
            Target energy per year [Wh].
        noise_fraction, noise_step_s, seed, method, wrap
            As for :class:`LoadModel`.

        Returns
        -------
        LoadModel
            The model.
        """
        return cls(
            read_commercial_load()["load_w"],
            annual_energy_wh=annual_energy_wh,
            noise_fraction=noise_fraction,
            noise_step_s=noise_step_s,
            seed=seed,
            method=method,
            wrap=wrap,
        )

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        column: str = "load_w",
        annual_energy_wh: float | None = None,
        *,
        noise_fraction: float = 0.0,
        noise_step_s: float = 900.0,
        seed: int = 0,
        method: Literal["hold", "linear"] = "hold",
        wrap: bool = True,
    ) -> LoadModel:
        """A load profile from a user CSV (``time`` ISO 8601 with offset, power in W).

        Parameters
        ----------
        path : str or os.PathLike
            The file (see :func:`openbess.data.read_timeseries_csv`).
        column : str
            Column holding the power [W].
        annual_energy_wh : float or None
            Target energy per year [Wh]; None keeps the file's level.
        noise_fraction, noise_step_s, seed, method, wrap
            As for :class:`LoadModel`.

        Returns
        -------
        LoadModel
            The model.

        Raises
        ------
        DataError
            If the file is malformed or has gaps (naming file, line and column).
        """
        frame = read_timeseries_csv(path, [column], allow_missing=False)
        return cls(
            frame[column],
            annual_energy_wh=annual_energy_wh,
            noise_fraction=noise_fraction,
            noise_step_s=noise_step_s,
            seed=seed,
            method=method,
            wrap=wrap,
        )

    def power_w(self, times: TimesLike) -> FloatArray:
        """Load power at the given times [W].

        Parameters
        ----------
        times : pandas.DatetimeIndex or array_like
            Tz-aware timestamps or Unix seconds UTC [s].

        Returns
        -------
        numpy.ndarray
            Power [W], >= 0, shape of ``times``.
        """
        t = to_unix_s(times)
        base = sample(
            self._index_s,
            self._values,
            t,
            method=self.method,
            wrap=self.wrap,
            step_s=self._step_s,
            name="load profile",
        )
        if self.noise_fraction == 0.0:
            return base
        noise = smooth_noise(t, self.seed, self.noise_step_s)
        out: FloatArray = base * np.maximum(0.0, 1.0 + self.noise_fraction * noise)
        return out

    def profile_w(self, times: TimesLike) -> FloatArray:
        """The scaled profile without noise (what a perfect forecaster would see) [W].

        Parameters
        ----------
        times : pandas.DatetimeIndex or array_like
            Tz-aware timestamps or Unix seconds UTC [s].

        Returns
        -------
        numpy.ndarray
            Power [W], >= 0.
        """
        t = to_unix_s(times)
        return sample(
            self._index_s,
            self._values,
            t,
            method=self.method,
            wrap=self.wrap,
            step_s=self._step_s,
            name="load profile",
        )
