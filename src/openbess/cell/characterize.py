"""Cell characterisation: a parameter set from measured (or simulated) cell tests.

Input: cell logs in our CSV format (:func:`openbess.cell.io.read_cell_log`). Each log is one of
three test kinds, recognised from the data (:func:`classify_test`) or given:

* ``ocv``: slow (C/10 or slower) constant-current discharge from full to empty and/or charge
  from empty to full, with rests before and after. Gives the OCV (mean of the two
  IR-compensated branches, or the discharge branch alone), the hysteresis half-width M (half the
  branch difference), the capacity and the coulombic efficiency.
* ``hppc``: pulses with long rests between SoC steps. Gives OCV points at the end of every rest
  of 15 min or more, and the dynamics (R0, RC pairs).
* ``dynamic``: anything else with enough current variation (drive cycles). Gives the dynamics.

Fitting (per test temperature: the median of the log's ``temperature_degc``, 25 degC when
absent): the OCV and M from the slow tests (from the HPPC rests when there is no slow test at
that temperature), then R0 and ``n_rc`` RC pairs, SoC-dependent on knots every 0.1, and the
hysteresis rate with :func:`openbess.cell.fit.fit_ecm_dynamic` on the HPPC (else dynamic, else
slow) test. Several temperatures give temperature tables; a temperature without a test of some
kind takes that part from the nearest temperature that has one.

The SoC scale: SoC 1 is the rested state after the slow charge (or at the start of the slow
discharge), SoC 0 the end of the slow discharge; the capacity is the charge of the slow
discharge at the reference temperature (the one closest to 25 degC) unless ``capacity_ah`` is
given. Without a slow test, an HPPC test is taken to start full and end empty.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from openbess.cell.fit import (
    DynamicFit,
    OcvFit,
    current_runs,
    fit_ecm_dynamic,
    format_cell_params_toml,
    monotone_ocv,
    ocv_from_branches,
    ocv_table_from_points,
    placeholder_params,
    soc_from_ocv,
    soc_grid,
    soc_trajectory,
    with_dynamics,
)
from openbess.cell.io import CellLog, coulombs_ah
from openbess.cell.params import CellParams, ThermalParams
from openbess.errors import EstimationError

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

TestKind = Literal["ocv", "hppc", "dynamic"]
TEST_KINDS: tuple[str, ...] = ("ocv", "hppc", "dynamic")

#: Mass per ampere-hour used for the (unmeasured) thermal parameters [kg/Ah].
MASS_KG_PER_AH = 0.03
REFERENCE_TEMPERATURE_DEGC = 25.0


@contextlib.contextmanager
def _single_thread_blas() -> Iterator[None]:
    """Limit BLAS to one thread while fitting (when threadpoolctl is installed).

    The least-squares problems of the dynamic fit are small (a few thousand rows, tens of
    columns); a multi-threaded OpenBLAS is no faster on them and, on a loaded machine, tens
    of times slower.
    """
    try:
        from threadpoolctl import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            threadpool_limits,
        )
    except ImportError:  # pragma: no cover - depends on the environment
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# -- recognising the test --------------------------------------------------------------------


def log_temperature_degc(cell_log: CellLog) -> float:
    """Test temperature of a log: median of its finite temperatures, 25 degC if none [degC].

    Parameters
    ----------
    cell_log : CellLog
        The log.

    Returns
    -------
    float
        Temperature [degC], rounded to 0.1.
    """
    t = cell_log.temperature_degc
    t = t[np.isfinite(t)]
    if t.size == 0:
        return REFERENCE_TEMPERATURE_DEGC
    return round(float(np.median(t)), 1)


def charge_span_ah(cell_log: CellLog) -> float:
    """Range of the cumulative net discharged charge over a log [Ah].

    Parameters
    ----------
    cell_log : CellLog
        The log.

    Returns
    -------
    float
        ``max - min`` of the charge count (the SoC span times the capacity).
    """
    q = cell_log.discharged_ah()
    return float(q.max() - q.min()) if q.size else 0.0


def _rest_threshold_a(cell_log: CellLog, capacity_ah: float) -> float:
    """Currents below this are rest [A]: 0.2 % of the capacity per hour (>= 1 mA)."""
    return max(0.002 * capacity_ah, 1e-3)


def _slow_runs(
    cell_log: CellLog, capacity_ah: float, min_fraction: float = 0.5
) -> list[tuple[int, int, int]]:
    """Constant-current runs of C/10 or slower that move at least ``min_fraction`` of Q."""
    thr = _rest_threshold_a(cell_log, capacity_ah)
    out = []
    for a, b, s in current_runs(cell_log.current_a, thr):
        if s == 0 or b - a < 5:
            continue
        i = np.abs(cell_log.current_a[a:b])
        ah = _run_charge_ah(cell_log, a, b)
        mean_i = float(np.mean(i))
        if (
            ah >= min_fraction * capacity_ah
            and mean_i <= 0.1 * capacity_ah * 1.05
            and float(np.std(i)) <= 0.1 * mean_i
        ):
            out.append((a, b, s))
    return out


def _run_charge_ah(cell_log: CellLog, a: int, b: int) -> float:
    """Charge moved by the samples ``a .. b-1`` (each held over the interval before it) [Ah]."""
    lo = max(a - 1, 0)
    q = coulombs_ah(cell_log.time_s[lo:b], cell_log.current_a[lo:b])
    return float(abs(q[-1]))


def classify_test(cell_log: CellLog, capacity_ah: float | None = None) -> TestKind:
    """Recognise the kind of a cell test from its current and timing.

    * ``ocv``: a constant-current run of C/10 or slower moving half of the capacity or more;
    * ``hppc``: three or more rests of 15 min or more and at least four short (<= 60 s)
      current pulses;
    * ``dynamic``: anything else.

    Parameters
    ----------
    cell_log : CellLog
        The log.
    capacity_ah : float, optional
        Cell capacity [Ah]; default the charge span of the log.

    Returns
    -------
    str
        ``"ocv"``, ``"hppc"`` or ``"dynamic"``.
    """
    cap = capacity_ah if capacity_ah is not None else charge_span_ah(cell_log)
    if cap <= 0:
        return "dynamic"
    if _slow_runs(cell_log, cap):
        return "ocv"
    t = cell_log.time_s
    runs = current_runs(cell_log.current_a, _rest_threshold_a(cell_log, cap))
    long_rests = 0
    pulses = 0
    for a, b, s in runs:
        start = t[a - 1] if a > 0 else t[a]
        duration = float(t[b - 1] - start)
        if s == 0 and duration >= 900.0:
            long_rests += 1
        elif s != 0 and duration <= 60.0:
            pulses += 1
    if long_rests >= 3 and pulses >= 4:
        return "hppc"
    return "dynamic"


# -- OCV -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    soc_ah: FloatArray  # charge moved since the run start [Ah]
    voltage_v: FloatArray
    charge_ah: float
    current_a: float  # mean magnitude [A]
    step_v: float  # smallest voltage step at the ends of the run [V]
    v_rest_before: float | None  # rested voltage before the run [V]
    v_rest_after: float | None  # rested voltage at the end of the rest after the run [V]
    log_index: int = -1
    start: int = 0


def _rest_end_voltage(cell_log: CellLog, a: int, b: int, forward: bool) -> float | None:
    """Voltage at the far end of the rest adjoining a run (None if under 15 min)."""
    thr = max(1e-3, 0.02 * float(np.mean(np.abs(cell_log.current_a[a:b]))))
    rest = np.abs(cell_log.current_a) <= thr
    t = cell_log.time_s
    if forward:
        k = b
        while k < rest.size and rest[k]:
            k += 1
        if k == b or t[k - 1] - t[b - 1] < 900.0:
            return None
        return float(cell_log.voltage_v[k - 1])
    k = a - 1
    while k >= 0 and rest[k]:
        k -= 1
    if k == a - 1 or t[a - 1] - t[k + 1] < 900.0:
        return None
    return float(cell_log.voltage_v[a - 1])


def _slow_branch(cell_log: CellLog, a: int, b: int, sign: int) -> _Branch:
    """Voltage along a slow run with its charge count from the run start (not compensated)."""
    v = cell_log.voltage_v
    n = len(cell_log)
    if a == 0 or b >= n:
        raise EstimationError(
            f"{cell_log.source}: the slow {'discharge' if sign > 0 else 'charge'} must be "
            "preceded and followed by a rest"
        )
    steps = [abs(v[a - 1] - v[a]), abs(v[b] - v[b - 1])]
    q = np.abs(coulombs_ah(cell_log.time_s[a - 1 : b], cell_log.current_a[a - 1 : b])[1:])
    return _Branch(
        soc_ah=q,
        voltage_v=v[a:b].copy(),
        charge_ah=float(q[-1]),
        current_a=float(np.mean(np.abs(cell_log.current_a[a:b]))),
        step_v=float(min(steps)),
        v_rest_before=_rest_end_voltage(cell_log, a, b, forward=False),
        v_rest_after=_rest_end_voltage(cell_log, a, b, forward=True),
    )


@dataclass(frozen=True)
class SlowTest:
    """Slow discharge and/or charge branches at one temperature, on the SoC grid.

    The branches are the measured voltages (not IR-compensated); :meth:`ocv` turns them into
    OCV and hysteresis with a resistance, consistently with the ECM: under a constant current
    ``I`` held long enough, the ECM's terminal voltage is ``OCV -+ M - I (R0 + sum R_k)``.

    Parameters
    ----------
    grid : numpy.ndarray
        SoC grid [fraction].
    discharge_v, charge_v : numpy.ndarray or None
        Branch voltages on the grid [V] (None when that branch was not measured).
    discharge_current_a, charge_current_a : float
        Mean current magnitude of each branch [A] (0 when absent).
    step_resistance_ohm : float
        Smallest end-of-run voltage step over the current [ohm] (a first resistance guess).
    full_rest_v, empty_rest_v : float or None
        Rested voltage at SoC 1 (before the discharge / after the charge) and at the end of
        the discharge (SoC ``empty_soc``) [V].
    empty_soc : float
        SoC at the end of the slow discharge [fraction].
    capacity_ah : float
        Charge of the slow discharge [Ah] (NaN if none).
    coulombic_efficiency : float
        Discharge over charge between the same limits [fraction] (1 if not both measured).
    voltage_min_v, voltage_max_v : float
        Voltage range of the tests [V].
    source : str
        What was measured.
    """

    grid: FloatArray
    discharge_v: FloatArray | None
    charge_v: FloatArray | None
    discharge_current_a: float
    charge_current_a: float
    step_resistance_ohm: float
    full_rest_v: float | None
    empty_rest_v: float | None
    empty_soc: float
    capacity_ah: float
    coulombic_efficiency: float
    voltage_min_v: float
    voltage_max_v: float
    source: str

    def ocv(self, resistance_ohm: FloatArray | float | None = None) -> OcvResult:
        """OCV and hysteresis with a given steady-state resistance.

        Parameters
        ----------
        resistance_ohm : numpy.ndarray or float, optional
            ``R0 + sum R_k`` on the grid [ohm]; default the step resistance.

        Returns
        -------
        OcvResult
            OCV (mean of the compensated branches) and M (what is left of their half
            difference), capped outside SoC 0.1 .. 0.9 at the interior maximum.
        """
        grid = self.grid
        r = self.step_resistance_ohm if resistance_ohm is None else resistance_ohm
        r_arr = np.broadcast_to(np.asarray(r, dtype=np.float64), grid.shape)
        m = np.zeros_like(grid)
        if self.discharge_v is not None and self.charge_v is not None:
            vd = self.discharge_v + r_arr * self.discharge_current_a
            vc = self.charge_v - r_arr * self.charge_current_a
            ocv = 0.5 * (vd + vc)
            m = np.clip(0.5 * (vc - vd), 0.0, None)
            inner = (grid >= 0.1) & (grid <= 0.9)
            if np.any(inner):
                m = np.minimum(m, m[inner].max())
        elif self.discharge_v is not None:
            ocv = self.discharge_v + r_arr * self.discharge_current_a
        elif self.charge_v is not None:
            ocv = self.charge_v - r_arr * self.charge_current_a
        else:  # pragma: no cover - construction guarantees a branch
            raise EstimationError("no slow branch")
        ocv = ocv.copy()
        # Rested end points (the branch mean near the cut-offs is mostly polarisation).
        if self.full_rest_v is not None:
            ocv[-1] = self.full_rest_v - m[-1]
        if self.empty_rest_v is not None and self.empty_soc <= 0.5 / (grid.size - 1):
            ocv[0] = self.empty_rest_v + m[0]
        return OcvResult(
            ocv_v=monotone_ocv(ocv),
            hysteresis_v=m,
            capacity_ah=self.capacity_ah,
            coulombic_efficiency=self.coulombic_efficiency,
            voltage_min_v=self.voltage_min_v,
            voltage_max_v=self.voltage_max_v,
            source=self.source,
        )


@dataclass(frozen=True)
class OcvResult:
    """OCV, hysteresis and capacity at one temperature.

    Parameters
    ----------
    ocv_v : numpy.ndarray
        Mean OCV on the SoC grid [V].
    hysteresis_v : numpy.ndarray
        Hysteresis half-width M on the SoC grid [V].
    capacity_ah : float
        Discharge capacity of the slow test [Ah] (NaN if not measured).
    coulombic_efficiency : float
        Charge efficiency [fraction] (1 if not measured).
    voltage_min_v, voltage_max_v : float
        Lowest and highest voltage of the test [V].
    source : str
        What the OCV was taken from.
    """

    ocv_v: FloatArray
    hysteresis_v: FloatArray
    capacity_ah: float
    coulombic_efficiency: float
    voltage_min_v: float
    voltage_max_v: float
    source: str


def _on_grid(soc: FloatArray, v: FloatArray, grid: FloatArray) -> FloatArray:
    o = np.argsort(soc)
    out: FloatArray = np.interp(grid, soc[o], v[o])
    return out


def slow_tests(
    logs: Sequence[CellLog], grid: FloatArray, capacity_ah: float | None = None
) -> SlowTest:
    """Collect the slow discharge and charge branches of OCV tests at one temperature.

    The slow discharge is taken to start full (SoC 1) and the slow charge to end full.

    Parameters
    ----------
    logs : sequence of CellLog
        Slow tests at one temperature.
    grid : numpy.ndarray
        SoC grid [fraction].
    capacity_ah : float, optional
        Capacity defining the SoC scale [Ah]; default the charge of the slow discharge (or
        charge).

    Returns
    -------
    SlowTest
        The branches.

    Raises
    ------
    EstimationError
        If no slow run is found.
    """
    dis: list[_Branch] = []
    chg: list[_Branch] = []
    vmin, vmax = math.inf, -math.inf
    for j, lg in enumerate(logs):
        cap_guess = capacity_ah if capacity_ah is not None else charge_span_ah(lg)
        for a, b, s in _slow_runs(lg, cap_guess):
            br = replace(_slow_branch(lg, a, b, s), log_index=j, start=a)
            (dis if s > 0 else chg).append(br)
        vmin = min(vmin, float(np.min(lg.voltage_v)))
        vmax = max(vmax, float(np.max(lg.voltage_v)))
    if not dis and not chg:
        sources = ", ".join(lg.source for lg in logs)
        raise EstimationError(f"{sources}: no slow (C/10 or slower) discharge or charge found")
    d = max(dis, key=lambda br: br.charge_ah) if dis else None
    c = max(chg, key=lambda br: br.charge_ah) if chg else None
    q_dis = d.charge_ah if d is not None else math.nan
    eta = 1.0
    if d is not None and c is not None:
        eta = min(1.0, d.charge_ah / c.charge_ah)
    if capacity_ah is not None:
        q = capacity_ah
    elif d is not None:
        q = d.charge_ah
    else:
        q = c.charge_ah * eta  # type: ignore[union-attr]
    parts = []
    dv = cv = None
    steps = []
    full_rest = empty_rest = None
    empty_soc = 1.0
    if d is not None:
        dv = _on_grid(1.0 - d.soc_ah / q, d.voltage_v, grid)
        steps.append(d.step_v / max(d.current_a, 1e-12))
        full_rest = d.v_rest_before
        empty_rest = d.v_rest_after
        empty_soc = max(0.0, 1.0 - d.charge_ah / q)
        parts.append("slow discharge")
    if c is not None:
        if d is not None and d.log_index == c.log_index and d.start < c.start:
            # Same test, charge after the discharge: count on from the start of the discharge.
            lg = logs[c.log_index]
            i = lg.current_a[d.start : c.start]
            dt = np.diff(lg.time_s[d.start - 1 : c.start])
            net = float(np.sum(np.where(i < 0, eta, 1.0) * i * dt)) / 3600.0
            c_soc = 1.0 - net / q + c.soc_ah * eta / q
        else:
            # The slow charge ends full (SoC 1).
            c_soc = 1.0 - (c.charge_ah - c.soc_ah) * eta / q
        cv = _on_grid(c_soc, c.voltage_v, grid)
        steps.append(c.step_v / max(c.current_a, 1e-12))
        if full_rest is None:
            full_rest = c.v_rest_after
        parts.append("slow charge")
    return SlowTest(
        grid=grid,
        discharge_v=dv,
        charge_v=cv,
        discharge_current_a=d.current_a if d is not None else 0.0,
        charge_current_a=c.current_a if c is not None else 0.0,
        step_resistance_ohm=float(min(steps)),
        full_rest_v=full_rest,
        empty_rest_v=empty_rest,
        empty_soc=empty_soc,
        capacity_ah=float(q_dis),
        coulombic_efficiency=float(eta),
        voltage_min_v=vmin,
        voltage_max_v=vmax,
        source=" + ".join(parts),
    )


def ocv_from_rests(
    cell_log: CellLog,
    grid: FloatArray,
    capacity_ah: float,
    soc0: float,
    min_rest_s: float = 900.0,
) -> OcvResult:
    """OCV from the end of the long rests of an HPPC test (hysteresis from both directions).

    Parameters
    ----------
    cell_log : CellLog
        The HPPC test.
    grid : numpy.ndarray
        SoC grid [fraction].
    capacity_ah : float
        Capacity [Ah].
    soc0 : float
        SoC at the first sample [fraction].
    min_rest_s : float
        Minimum rest [s].

    Returns
    -------
    OcvResult
        The OCV (M from rests after charging and after discharging where both exist).
    """
    from openbess.cell.fit import ocv_points_from_rests

    thr = _rest_threshold_a(cell_log, capacity_ah)
    pts = ocv_points_from_rests(
        cell_log, capacity_ah, soc0, min_rest_s=min_rest_s, rest_threshold_a=thr
    )
    # The rest before the first current, if long, is a point too.
    runs = current_runs(cell_log.current_a, thr)
    zs = list(pts.soc)
    vs = list(pts.voltage_v)
    signs = list(pts.previous_sign)
    if runs and runs[0][2] == 0:
        a, b, _ = runs[0]
        if cell_log.time_s[b - 1] - cell_log.time_s[a] >= min_rest_s:
            zs.insert(0, soc0)
            vs.insert(0, float(cell_log.voltage_v[b - 1]))
            signs.insert(0, 0)
    z = np.asarray(zs)
    v = np.asarray(vs)
    sg = np.asarray(signs)
    m = np.zeros_like(grid)
    dis = sg >= 0
    chg = sg <= 0
    if np.count_nonzero(sg > 0) >= 2 and np.count_nonzero(sg < 0) >= 2:
        ocv, m = ocv_from_branches(z[dis], v[dis], z[chg], v[chg], grid)
    else:
        ocv = ocv_table_from_points(z, v, grid)
    return OcvResult(
        ocv_v=monotone_ocv(ocv),
        hysteresis_v=m,
        capacity_ah=math.nan,
        coulombic_efficiency=1.0,
        voltage_min_v=float(np.min(cell_log.voltage_v)),
        voltage_max_v=float(np.max(cell_log.voltage_v)),
        source="HPPC rests",
    )


# -- the whole characterisation -------------------------------------------------------------


@dataclass
class TestSummary:
    """What was done with one input log.

    Parameters
    ----------
    source : str
        File name.
    kind : str
        Test kind (recognised or given).
    temperature_degc : float
        Test temperature [degC].
    samples : int
        Number of samples.
    used_for : list of str
        What was fitted from it.
    fit_rmse_mv : float or None
        Voltage RMSE of the dynamic fit on it [mV].
    """

    source: str
    kind: str
    temperature_degc: float
    samples: int
    used_for: list[str] = field(default_factory=list)
    fit_rmse_mv: float | None = None


@dataclass
class Characterization:
    """Result of :func:`characterize`.

    Parameters
    ----------
    params : CellParams
        The fitted parameter set.
    tests : list of TestSummary
        One entry per input log.
    notes : list of str
        Assumptions and fallbacks taken.
    """

    params: CellParams
    tests: list[TestSummary]
    notes: list[str]

    def to_toml(self) -> str:
        """The parameter set as TOML, with a header on how it was made.

        Returns
        -------
        str
            TOML text for :func:`openbess.cell.params.load_cell_params`.
        """
        lines = ["Generated by `openbess characterize` from:"]
        for t in self.tests:
            rmse = f", fit RMSE {t.fit_rmse_mv:.2f} mV" if t.fit_rmse_mv is not None else ""
            used = ", ".join(t.used_for) or "not used"
            lines.append(
                f"  {t.source}: {t.kind} test at {t.temperature_degc:g} degC, "
                f"{t.samples} samples -> {used}{rmse}"
            )
        lines += [f"Note: {n}" for n in self.notes]
        return format_cell_params_toml(self.params, header="\n".join(lines))

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary.

        Returns
        -------
        dict
            Name, capacity, temperatures, tests and notes.
        """
        p = self.params
        mid = p.soc_grid.size // 2
        ref = int(np.argmin(np.abs(p.temperature_grid_degc - REFERENCE_TEMPERATURE_DEGC)))
        return {
            "name": p.name,
            "chemistry": p.chemistry,
            "capacity_ah": round(p.capacity_ah, 5),
            "temperatures_degc": p.temperature_grid_degc.tolist(),
            "r0_mohm_at_50pct": round(1e3 * float(p.r0_ohm[ref, mid]), 3),
            "rc_tau_s": np.round(p.rc_tau_s[:, ref], 2).tolist(),
            "hysteresis_max_mv": round(1e3 * float(p.hysteresis_v.max()), 2),
            "tests": [t.__dict__ for t in self.tests],
            "notes": self.notes,
        }


def _guess_chemistry(ocv_mid_v: float) -> str:
    if ocv_mid_v < 2.6:
        return "LTO"
    if ocv_mid_v < 3.45:
        return "LFP"
    return "NMC"


def _nearest(temps: Sequence[float], t: float) -> float:
    return min(temps, key=lambda x: (abs(x - t), x))


def characterize(
    logs: Sequence[CellLog],
    *,
    capacity_ah: float | None = None,
    kinds: Sequence[TestKind | None] | None = None,
    soc_points: int = 41,
    n_rc: int = 2,
    name: str = "characterized",
    chemistry: str | None = None,
    max_evaluations: int = 200,
    knot_step: float = 0.1,
) -> Characterization:
    """Fit a cell parameter set from cell tests (see the module docstring).

    Parameters
    ----------
    logs : sequence of CellLog
        The tests (one cell each).
    capacity_ah : float, optional
        Capacity [Ah]; default measured (slow discharge at the reference temperature).
    kinds : sequence of str or None, optional
        Test kind per log (``None`` entries: recognised from the data).
    soc_points : int
        Points of the SoC grid of the tables.
    n_rc : int
        Number of RC pairs.
    name : str
        Name of the parameter set.
    chemistry : str, optional
        Chemistry label; default guessed from the OCV at 50 % (LFP below 3.45 V).
    max_evaluations : int
        Budget of the time-constant search per dynamic fit.
    knot_step : float
        Spacing of the SoC knots of the resistances [fraction] (must fall on the grid).

    Returns
    -------
    Characterization
        Parameters, what each test was used for, and notes.

    Raises
    ------
    EstimationError
        If the tests do not allow a fit (no OCV information, nothing to fit the dynamics).
    ValueError
        On bad arguments.
    """
    if not logs:
        raise ValueError("no cell logs given")
    if kinds is not None and len(kinds) != len(logs):
        raise ValueError(f"{len(kinds)} kinds given for {len(logs)} logs")
    if capacity_ah is not None and capacity_ah <= 0:
        raise ValueError(f"capacity_ah must be > 0, got {capacity_ah}")
    if n_rc < 1:
        raise ValueError(f"n_rc must be >= 1, got {n_rc}")
    grid = soc_grid(soc_points)
    step = 1.0 / (soc_points - 1)
    n_knots = round(1.0 / knot_step)
    if (
        abs(n_knots * knot_step - 1.0) > 1e-9
        or abs(knot_step / step - round(knot_step / step)) > 1e-6
    ):
        raise ValueError(
            f"knot_step {knot_step} must divide 1 and be a multiple of the grid step {step:g}"
        )
    knots = np.linspace(0.0, 1.0, n_knots + 1)
    notes: list[str] = []
    tests: list[TestSummary] = []
    by_kind: dict[str, dict[float, list[tuple[int, CellLog]]]] = {k: {} for k in TEST_KINDS}
    cap_hint = capacity_ah
    if cap_hint is None:
        spans = [charge_span_ah(lg) for lg in logs]
        cap_hint = max(spans) if spans else None
    for k, lg in enumerate(logs):
        if len(lg) < 10:
            raise EstimationError(f"{lg.source}: too short to use ({len(lg)} samples)")
        given = kinds[k] if kinds is not None else None
        if given is not None and given not in TEST_KINDS:
            raise ValueError(f"unknown test kind {given!r} (one of {', '.join(TEST_KINDS)})")
        kind: TestKind = given if given is not None else classify_test(lg, cap_hint)
        temp = log_temperature_degc(lg)
        if not np.any(np.isfinite(lg.temperature_degc)):
            notes.append(f"{lg.source}: no temperature column, taken as 25 degC")
        tests.append(TestSummary(lg.source, kind, temp, len(lg)))
        by_kind[kind].setdefault(temp, []).append((k, lg))
    temps = sorted({t.temperature_degc for t in tests})
    ref_t = _nearest(temps, REFERENCE_TEMPERATURE_DEGC)

    # 1. Slow tests: capacity (reference temperature), then branches on that SoC scale.
    capacity = capacity_ah
    if capacity is None and by_kind["ocv"]:
        t_cap = _nearest(list(by_kind["ocv"]), ref_t)
        probe = slow_tests([lg for _, lg in by_kind["ocv"][t_cap]], grid)
        if math.isfinite(probe.capacity_ah):
            capacity = probe.capacity_ah
    if capacity is None and by_kind["hppc"]:
        t_h = _nearest(list(by_kind["hppc"]), ref_t)
        lg = by_kind["hppc"][t_h][0][1]
        capacity = float(lg.discharged_ah().max())
        notes.append(
            f"capacity {capacity:.4g} Ah: charge discharged by the HPPC test {lg.source} "
            "(taken to start full and end empty)"
        )
    if capacity is None:
        capacity = float(max(charge_span_ah(lg) for lg in logs))
        notes.append(f"capacity {capacity:.4g} Ah: the largest charge span of the logs")
    if capacity <= 0:
        raise EstimationError("cannot determine the capacity (no current in the logs?)")
    slow: dict[float, SlowTest] = {}
    for t, items in by_kind["ocv"].items():
        slow[t] = slow_tests([lg for _, lg in items], grid, capacity)
        for k, _ in items:
            tests[k].used_for.append(f"OCV ({slow[t].source})")
    ocv_at: dict[float, OcvResult] = {t: st.ocv() for t, st in slow.items()}

    # OCV from HPPC rests where there is no slow test.
    for t, items in by_kind["hppc"].items():
        if t in ocv_at:
            continue
        k, lg = items[0]
        soc0 = 1.0
        if ocv_at:
            near = ocv_at[_nearest(list(ocv_at), t)]
            soc0, _ = _start_state(lg, _provisional(near, grid, capacity, name), t)
        else:
            notes.append(f"{lg.source}: HPPC taken to start full (SoC 1)")
        ocv_at[t] = ocv_from_rests(lg, grid, capacity, soc0)
        tests[k].used_for.append("OCV (rests)")
    if not ocv_at:
        raise EstimationError(
            "no OCV information: give a slow OCV test or an HPPC test with long rests "
            "(or set --kind)"
        )
    ocv_temps = sorted(ocv_at)
    for t in temps:
        if t not in ocv_at:
            src = _nearest(ocv_temps, t)
            notes.append(f"OCV at {t:g} degC taken from {src:g} degC")
    vmin = min(r.voltage_min_v for r in ocv_at.values())
    vmax = max(r.voltage_max_v for r in ocv_at.values())

    def assemble(ocv_now: Mapping[float, OcvResult]) -> CellParams:
        rows = [ocv_now[_nearest(ocv_temps, t)] for t in temps]
        ocv_tab = monotone_ocv(np.stack([r.ocv_v for r in rows]))
        ocv_fit = OcvFit(
            temperature_degc=np.array(temps, dtype=np.float64),
            soc=grid,
            ocv_v=ocv_tab,
            hysteresis_v=np.stack([r.hysteresis_v for r in rows]),
            capacity_ah=np.full(len(temps), capacity),
            coulombic_efficiency=np.array([r.coulombic_efficiency for r in rows]),
            step_resistance_ohm=np.full(len(temps), np.nan),
            raw_ocv_v=ocv_tab,
        )
        ocv_mid = float(np.interp(0.5, grid, ocv_tab[temps.index(ref_t)]))
        return placeholder_params(
            name,
            chemistry or _guess_chemistry(ocv_mid),
            ocv_fit,
            capacity,
            voltage_min_v=round(vmin, 3),
            voltage_max_v=round(vmax, 3),
            nominal_voltage_v=round(ocv_mid, 3),
            thermal=ThermalParams(mass_kg=MASS_KG_PER_AH * capacity),
            n_rc=n_rc,
        )

    # 2. Dynamics per temperature (HPPC, else dynamic, else the slow test). With slow tests,
    # twice: their branches are compensated with the fitted R0 + sum R_k (the ECM's own
    # steady-state polarisation), which also gives the hysteresis that is left, and the
    # dynamics are fitted again on the corrected OCV.
    dyn_logs: dict[float, tuple[int, CellLog]] = {}
    for t in temps:
        dyn_items = (
            by_kind["hppc"].get(t) or by_kind["dynamic"].get(t) or by_kind["ocv"].get(t) or []
        )
        if dyn_items:
            dyn_logs[t] = max(dyn_items, key=lambda kl: len(kl[1]))
    if not dyn_logs:
        raise EstimationError("nothing to fit the dynamics on")
    passes = 2 if slow else 1
    fits: dict[float, DynamicFit] = {}
    params = assemble(ocv_at)
    with _single_thread_blas():
        for n_pass in range(passes):
            base = params
            has_m = bool(np.any(base.hysteresis_v > 1e-4))
            new_fits: dict[float, DynamicFit] = {}
            for t, (_k, lg) in dyn_logs.items():
                soc0, h0 = _start_state(lg, base, t)
                prev = fits.get(t)
                taus = (
                    tuple(float(x) for x in prev.rc_tau_s)
                    if prev is not None
                    else tuple(float(x) for x in np.geomspace(10.0, 300.0, n_rc))
                )
                new_fits[t] = fit_ecm_dynamic(
                    lg,
                    base,
                    soc0=soc0,
                    temperature_degc=t,
                    hysteresis0=h0,
                    n_rc=n_rc,
                    tau_guess_s=taus,
                    soc_knots=knots.tolist(),
                    fit_hysteresis=has_m,
                    gamma_guess=prev.hysteresis_rate if prev is not None else 50.0,
                    max_evaluations=max_evaluations if prev is None else max_evaluations // 2,
                )
                log.info(
                    "pass %d: dynamics at %g degC from %s: rmse %.2f mV",
                    n_pass + 1,
                    t,
                    lg.source,
                    1e3 * new_fits[t].rmse_v,
                )
            fits = new_fits
            params = with_dynamics(base, fits)
            if n_pass + 1 < passes:
                # Compensate the slow branches with the ECM's own steady-state resistance.
                model_r = {
                    t: params.r0_ohm[j] + params.rc_r_ohm[:, j].sum(axis=0)
                    for j, t in enumerate(temps)
                }
                for t, st in slow.items():
                    ocv_at[t] = st.ocv(model_r[t])
                params = assemble(ocv_at)
    for t, (k, _) in dyn_logs.items():
        has_m = bool(np.any(params.hysteresis_v > 1e-4))
        tests[k].used_for.append("R0, RC" + (", hysteresis rate" if has_m else ""))
        tests[k].fit_rmse_mv = round(1e3 * fits[t].rmse_v, 3)
    for t in temps:
        if t not in fits:
            notes.append(f"R0 and RC at {t:g} degC taken from {_nearest(list(fits), t):g} degC")
    if not np.any(params.hysteresis_v > 1e-4):
        params = replace(
            params, hysteresis_v=np.zeros_like(params.hysteresis_v), hysteresis_rate=0.0
        )
    sources = ", ".join(sorted({t.source for t in tests}))
    params = replace(params, source=f"openbess characterize from {sources}")
    return Characterization(params, tests, notes)


def _provisional(res: OcvResult, grid: FloatArray, capacity: float, name: str) -> CellParams:
    """A parameter set with only an OCV (to invert voltages to SoC)."""
    fit = OcvFit(
        temperature_degc=np.array([REFERENCE_TEMPERATURE_DEGC]),
        soc=grid,
        ocv_v=res.ocv_v[None, :],
        hysteresis_v=np.zeros((1, grid.size)),
        capacity_ah=np.array([capacity]),
        coulombic_efficiency=np.array([res.coulombic_efficiency]),
        step_resistance_ohm=np.array([np.nan]),
        raw_ocv_v=res.ocv_v[None, :],
    )
    return placeholder_params(
        name, "unknown", fit, capacity, 0.0, 10.0, 3.0, ThermalParams(mass_kg=1.0)
    )


def _start_state(
    cell_log: CellLog, params: CellParams, temperature_degc: float
) -> tuple[float, float]:
    """SoC and hysteresis at the first sample of a test, from its first (rested) voltage.

    A test that starts at the top of the voltage window is taken to start full after a charge
    (h = +1); otherwise the OCV is inverted on the mean branch (h = 0).
    """
    v0 = float(cell_log.voltage_v[0])
    mid = soc_from_ocv(params, v0, temperature_degc, 0.0)
    top = float(np.max(params.ocv_v)) - 0.01 * (
        float(np.max(params.ocv_v)) - float(np.min(params.ocv_v))
    )
    if v0 >= top or mid >= 0.99:
        return 1.0, 1.0
    return mid, 0.0


def soc_of_test(cell_log: CellLog, params: CellParams) -> FloatArray:
    """Coulomb-counted SoC along a test from its start state (as the fit assumed it).

    Parameters
    ----------
    cell_log : CellLog
        The test.
    params : CellParams
        The fitted parameter set.

    Returns
    -------
    numpy.ndarray
        SoC [fraction].
    """
    t = log_temperature_degc(cell_log)
    soc0, _ = _start_state(cell_log, params, t)
    eta = float(np.interp(t, params.temperature_grid_degc, params.coulombic_efficiency))
    return soc_trajectory(cell_log, params.capacity_ah, soc0, eta)


def parse_kinds(values: Sequence[str], n_logs: int) -> list[TestKind | None]:
    """Parse ``--kind`` values: one per file, or a single one for all (``auto`` = recognise).

    Parameters
    ----------
    values : sequence of str
        The values.
    n_logs : int
        Number of files.

    Returns
    -------
    list
        Kind per file (None: recognise).

    Raises
    ------
    ValueError
        On an unknown kind or a count that matches neither 1 nor ``n_logs``.
    """
    out: list[TestKind | None] = []
    for v in values:
        key = v.strip().lower()
        if key == "auto":
            out.append(None)
        elif key in TEST_KINDS:
            out.append(key)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown test kind {v!r} (one of auto, {', '.join(TEST_KINDS)})")
    if not out:
        return [None] * n_logs
    if len(out) == 1:
        return out * n_logs
    if len(out) != n_logs:
        raise ValueError(f"{len(out)} --kind values for {n_logs} files (give 1 or {n_logs})")
    return out


def kinds_by_source(result: Characterization) -> Mapping[str, str]:
    """Test kind of every input, by source name.

    Parameters
    ----------
    result : Characterization
        A characterisation.

    Returns
    -------
    dict
        Source to kind.
    """
    return {t.source: t.kind for t in result.tests}
