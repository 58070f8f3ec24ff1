"""The BMS logbook: accumulators on hand-computed cases, rainflow, invariants, persistence."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rainflow
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.logbook import (
    PERIOD_COLUMNS,
    Logbook,
    LogbookConfig,
    LogbookWriter,
    equivalent_full_cycles,
    histogram_time,
    load_logbook,
    rainflow_depth_counts,
    round_trip_efficiency,
    save_logbook,
    soc_turning_points,
)
from openbess.contract import ContactorState, GateDecision, Outcome, Reason, Telemetry
from openbess.errors import DataError, StorageError
from openbess.storage import RunStore

T0 = 1_700_000_000.0  # a Unix time [s]
NAN = math.nan


def config(**kw: object) -> LogbookConfig:
    base: dict[str, object] = {
        "nominal_capacity_ah": 100.0,
        "nominal_energy_wh": 5000.0,
        "cell_voltage_min_v": 2.5,
        "cell_voltage_max_v": 3.65,
    }
    base.update(kw)
    return LogbookConfig(**base)  # type: ignore[arg-type]


class Feeder:
    """Calls Logbook.update with defaults, advancing the time by dt each call."""

    def __init__(self, lb: Logbook, t0: float = T0) -> None:
        self.lb = lb
        self.t = t0
        self.first = True

    def __call__(self, dt: float = 1.0, **kw: object) -> None:
        if self.first:
            dt, self.first = 0.0, False
        self.t += dt
        v: dict[str, object] = {
            "current_a": 0.0,
            "pack_voltage_v": 50.0,
            "soc": 0.5,
            "soc_cell_min": 0.5,
            "soc_cell_max": 0.5,
            "cell_voltage_min_v": 3.2,
            "cell_voltage_max_v": 3.3,
            "temperature_min_degc": 24.0,
            "temperature_max_degc": 26.0,
            "temperature_avg_degc": 25.0,
            "soh": 1.0,
            "capacity_ah": 100.0,
        }
        v.update(kw)
        self.lb.update(self.t, dt, **v)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- throughput, RTE


def test_full_cycle_at_1c_is_one_equivalent_full_cycle():
    lb = Logbook(config())
    f = Feeder(lb)
    f(soc=1.0)
    for k in range(1, 3601):  # one hour at 1C out
        f(current_a=100.0, soc=1.0 - k / 3600)
    for k in range(1, 3601):  # one hour at 1C in
        f(current_a=-100.0, soc=k / 3600)
    assert lb.charge_out_ah == pytest.approx(100.0, rel=1e-12)
    assert lb.charge_in_ah == pytest.approx(100.0, rel=1e-12)
    assert lb.equivalent_full_cycles() == pytest.approx(1.0, rel=1e-12)
    assert lb.time_discharging_s == 3600.0
    assert lb.time_charging_s == 3600.0
    # SoC 1 -> 0 -> 1: two rainflow half cycles of depth 1 (the series is open at both ends).
    depth = lb.cycle_depth_histogram()
    assert depth.sum() == pytest.approx(1.0)
    assert depth[-1] == pytest.approx(1.0)


def test_equivalent_full_cycles_function_and_bad_capacity():
    np.testing.assert_allclose(
        equivalent_full_cycles([100.0, 50.0], [100.0, 0.0], 100.0), [1, 0.25]
    )
    with pytest.raises(ValueError, match="capacity_ah"):
        equivalent_full_cycles(1.0, 1.0, 0.0)


def test_round_trip_efficiency_of_a_known_in_and_out():
    lb = Logbook(config())
    f = Feeder(lb)
    f(soc=0.5)
    for k in range(1, 3601):  # 1 h charge at 50 A, 52 V: 2600 Wh in; AC 2750 W in
        f(current_a=-50.0, pack_voltage_v=52.0, soc=0.5 + 0.5 * k / 3600, ac_power_w=-2750.0)
    for k in range(1, 3601):  # 1 h discharge at 50 A, 48 V: 2400 Wh out; AC 2300 W out
        f(current_a=50.0, pack_voltage_v=48.0, soc=1.0 - 0.5 * k / 3600, ac_power_w=2300.0)
    assert lb.energy_in_dc_wh == pytest.approx(2600.0)
    assert lb.energy_out_dc_wh == pytest.approx(2400.0)
    assert lb.round_trip_efficiency("dc", corrected=False) == pytest.approx(2400 / 2600)
    # Same SoC at both ends: the correction is zero.
    assert lb.round_trip_efficiency("dc") == pytest.approx(2400 / 2600)
    assert lb.round_trip_efficiency("ac") == pytest.approx(2300 / 2750)
    assert lb.round_trip_efficiency("dc", recent_periods=30) == pytest.approx(2400 / 2600)
    with pytest.raises(ValueError, match="side"):
        lb.round_trip_efficiency("xx")


def test_round_trip_efficiency_counts_the_stored_energy_change():
    assert float(round_trip_efficiency(1000.0, 900.0, 50.0)) == pytest.approx(0.95)
    assert math.isnan(float(round_trip_efficiency(0.0, 10.0)))
    # Logbook: charge 1000 Wh, discharge nothing, SoC up 0.2 of a 5000 Wh pack at SoH 0.9:
    # 900 Wh stored -> corrected RTE 0.9, plain 0.
    lb = Logbook(config())
    f = Feeder(lb)
    f(soc=0.3, soh=0.9)
    for k in range(1, 1001):
        f(current_a=-20.0, pack_voltage_v=50.0, soc=0.3 + 0.2 * k / 1000, soh=0.9, dt=3.6)
    assert lb.energy_in_dc_wh == pytest.approx(1000.0)
    assert lb.round_trip_efficiency("dc") == pytest.approx(0.9)
    assert lb.round_trip_efficiency("dc", corrected=False) == pytest.approx(0.0)
    assert lb.round_trip_efficiency("ac") is None  # AC power never given


# --------------------------------------------------------------------------- temperatures


def test_time_at_and_charging_at_extreme_temperature():
    lb = Logbook(config(temperature_high_degc=45.0, temperature_low_degc=0.0))
    f = Feeder(lb)
    f()
    for _ in range(300):  # 300 s hot at rest
        f(temperature_max_degc=50.0)
    for _ in range(300):  # 300 s hot while charging
        f(temperature_max_degc=50.0, current_a=-30.0)
    for _ in range(100):  # 44 degC: below 45 but within the 2 degC hysteresis
        f(temperature_max_degc=44.0)
    for _ in range(50):  # hot again: same episode
        f(temperature_max_degc=46.0)
    for _ in range(100):  # clearly back
        f(temperature_max_degc=30.0)
    for _ in range(20):  # second episode
        f(temperature_max_degc=47.0)
    for _ in range(200):  # cold while charging
        f(temperature_min_degc=-5.0, current_a=-30.0)
    assert lb.time_above_high_s == 300 + 300 + 50 + 20
    assert lb.time_charging_hot_s == 300
    assert lb.n_temperature_high == 2
    assert lb.time_below_low_s == 200
    assert lb.time_charging_cold_s == 200
    assert lb.n_temperature_low == 1
    codes = [e.code for e in lb.pop_events()]
    assert codes == [
        "temperature_high:start",
        "temperature_high:end",
        "temperature_high:start",
        "temperature_high:end",
        "temperature_low:start",
    ]
    assert lb.pop_events() == []
    ext = lb.extremes()
    assert ext["temperature_max_degc"]["value"] == 50.0
    assert ext["temperature_max_degc"]["time_s"] == T0 + 1  # first time it was reached
    assert ext["temperature_min_degc"]["value"] == -5.0


# --------------------------------------------------------------------------- deep discharge


def test_deep_discharge_counted_once_per_episode():
    lb = Logbook(config(cell_voltage_min_v=2.5, voltage_hysteresis_v=0.05))
    f = Feeder(lb)
    f()
    for k in range(100):  # below the minimum, wobbling around it for 100 cycles
        f(cell_voltage_min_v=2.45 + 0.06 * (k % 2), current_a=20.0)
    assert lb.n_deep_discharge == 1
    assert lb.time_deep_discharge_s == 50  # only the cycles below 2.5 V
    for _ in range(10):  # recovered past the hysteresis
        f(cell_voltage_min_v=3.0)
    assert not lb.in_deep_discharge
    for _ in range(5):  # a second episode, by SoC this time
        f(soc_cell_min=0.01)
    assert lb.n_deep_discharge == 2
    for _ in range(5):  # SoC back above 0.02 but within the 0.03 hysteresis: still in it
        f(soc_cell_min=0.04)
    assert lb.in_deep_discharge
    f(soc_cell_min=0.2)
    assert not lb.in_deep_discharge
    assert lb.n_deep_discharge == 2
    ev = lb.pop_events()
    assert [e.code for e in ev] == [
        "deep_discharge:start",
        "deep_discharge:end",
        "deep_discharge:start",
        "deep_discharge:end",
    ]
    assert {e.kind for e in ev} == {"logbook"}
    assert ev[0].severity == "warning"
    assert [(e["kind"], e["start_s"]) for e in lb.episodes] == [
        ("deep_discharge", T0 + 1),
        ("deep_discharge", T0 + 111),
    ]
    assert all(e["end_s"] is not None for e in lb.episodes)


def test_overvoltage_episodes_and_unknown_values_never_raise():
    lb = Logbook(config())
    f = Feeder(lb)
    f()
    for _ in range(3):
        f(cell_voltage_max_v=3.7)
    f(cell_voltage_max_v=3.3)
    assert lb.n_overvoltage == 1
    assert not lb.in_overvoltage
    for _ in range(10):  # everything unknown: counted as time, nothing else
        f(
            current_a=NAN,
            pack_voltage_v=NAN,
            soc=NAN,
            soc_cell_min=NAN,
            soc_cell_max=NAN,
            cell_voltage_min_v=NAN,
            cell_voltage_max_v=NAN,
            temperature_min_degc=NAN,
            temperature_max_degc=NAN,
            temperature_avg_degc=NAN,
            soh=NAN,
            capacity_ah=NAN,
        )
    assert lb.elapsed_s == 14
    assert lb.time_unknown_soc_temperature_s == 10
    assert lb.n_deep_discharge == 0
    assert lb.histogram_soc_temperature().sum() == 4


# --------------------------------------------------------------------------- alarms, health


def test_alarm_counts_each_appearance():
    lb = Logbook(config())
    f = Feeder(lb)
    f()
    for _ in range(5):
        f(alarms=("cell_voltage_high:mol",))
    f(alarms=("cell_voltage_high:mol", "temperature_high:rsl"))
    f(alarms=("temperature_high:rsl",))
    f()
    f(alarms=("cell_voltage_high:mol",))
    assert lb.alarm_counts == {"cell_voltage_high:mol": 2, "temperature_high:rsl": 1}
    assert lb.time_in_alarm_s == 8


def test_health_figures_capacity_and_power_fade():
    lb = Logbook(config(nominal_resistance_ohm=0.05))
    f = Feeder(lb)
    f(soh=0.95, capacity_ah=95.0, resistance_ohm=NAN)
    assert lb.power_fade() is None
    f(soh=0.9, capacity_ah=90.0, resistance_ohm=0.0625)
    m = {x.name: x.value for x in lb.metrics()}
    assert m["capacity_fade"] == pytest.approx(0.1)
    assert m["remaining_capacity_ah"] == 90.0
    assert m["remaining_energy_wh"] == pytest.approx(4500.0)
    assert m["resistance_increase"] == pytest.approx(0.25)
    assert m["power_fade"] == pytest.approx(0.2)
    assert m["soh_min"] == 0.9
    assert lb.soh_first == 0.95


def test_self_discharge_from_soc_drop_at_rest():
    cfg = config(self_discharge_settle_s=3600.0, self_discharge_min_rest_s=6 * 3600.0)
    lb = Logbook(cfg)
    f = Feeder(lb)
    f(soc=0.8)
    # Two days at rest, 60 s cycles; after the settling hour the SoC drops 0.01 per day.
    for k in range(1, 2 * 1440 + 1):
        t = 60.0 * k
        f(dt=60.0, soc=0.8 - 0.01 * max(t - 3600.0, 0.0) / 86400.0, current_a=0.2)
    f(current_a=30.0, soc=0.7)  # the rest ends
    assert lb.self_discharge_episodes == 1
    assert lb.self_discharge_rate_per_day() == pytest.approx(0.01, rel=1e-9)
    # A rest with balancing gives no measurement.
    lb2 = Logbook(cfg)
    g = Feeder(lb2)
    g(soc=0.8)
    for k in range(1, 1441):
        g(dt=60.0, soc=0.8 - 0.01 * k / 1440, balancing_cells=3)
    g(current_a=30.0)
    assert lb2.self_discharge_rate_per_day() is None


# --------------------------------------------------------------------------- histograms


def test_histograms_place_time_in_the_right_bins():
    lb = Logbook(config())
    f = Feeder(lb)
    f()
    for _ in range(100):  # SoC 0.55, 22 degC, 0.5C discharge
        f(soc=0.55, temperature_avg_degc=22.0, current_a=50.0)
    for _ in range(40):  # SoC 0.05, -30 degC (open lowest bin), 3C charge (open lowest)
        f(soc=0.05, temperature_avg_degc=-30.0, current_a=-300.0)
    h = lb.histogram_soc_temperature()
    c = lb.config
    jt22 = int(np.searchsorted(c.temperature_edges_degc, 22.0, side="right")) - 1
    assert h[5, jt22] == 100
    assert h[0, 0] == 40
    assert h.sum() == 140
    hc = lb.histogram_c_rate_temperature()
    jc = int(np.searchsorted(c.c_rate_edges, 0.5, side="right")) - 1
    assert hc[jc, jt22] == 100
    assert hc[0, 0] == 40


_maybe_nan = st.one_of(st.floats(-1e3, 1e3), st.just(NAN))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 120.0),
            st.one_of(st.floats(-0.2, 1.2), st.just(NAN)),
            _maybe_nan,
            _maybe_nan,
        ),
        min_size=1,
        max_size=80,
    )
)
def test_histogram_totals_equal_elapsed_time(samples: list[tuple[float, float, float, float]]):
    lb = Logbook(config())
    t = T0
    for k, (dt, soc, temp, cur) in enumerate(samples):
        t += dt
        d = 0.0 if k == 0 else dt
        lb.update(t, d, cur, 50.0, soc, soc, soc, 3.2, 3.3, temp, temp, temp, 1.0, 100.0)
    elapsed = sum(s[0] for s in samples[1:])
    assert lb.elapsed_s == pytest.approx(elapsed)
    h1 = lb.histogram_soc_temperature()
    h2 = lb.histogram_c_rate_temperature()
    assert h1.sum() + lb.time_unknown_soc_temperature_s == pytest.approx(elapsed)
    assert h2.sum() + lb.time_unknown_c_rate_temperature_s == pytest.approx(elapsed)
    assert np.all(h1 >= 0)
    assert np.all(h2 >= 0)
    # Online equals the vectorised offline form.
    arr = np.array(samples, dtype=np.float64)
    w = np.concatenate([[0.0], arr[1:, 0]])
    c = lb.config
    np.testing.assert_allclose(
        h1, histogram_time(arr[:, 1], arr[:, 2], w, c.soc_edges, c.temperature_edges_degc)
    )
    np.testing.assert_allclose(
        h2,
        histogram_time(arr[:, 3] / 100.0, arr[:, 2], w, c.c_rate_edges, c.temperature_edges_degc),
    )


# --------------------------------------------------------------------------- rainflow

# ASTM E1049-85 (2011), section 5.4.4 example: -2, 1, -3, 5, -1, 3, -4, 4, -2 gives
# range 3: 0.5, 4: 1.5, 6: 0.5, 8: 1, 9: 0.5 cycles. Scaled to SoC by 0.5 + x / 20.
ASTM = [-2, 1, -3, 5, -1, 3, -4, 4, -2]
DEPTH_EDGES = (0.0, 0.125, 0.175, 0.25, 0.35, 0.425, 0.5, 1.0)
ASTM_COUNTS = [0.0, 0.5, 1.5, 0.5, 1.0, 0.5, 0.0]  # ranges 0.15, 0.2, 0.3, 0.4, 0.45


def _ramp(points: list[float], step: float) -> list[float]:
    out = [points[0]]
    for a, b in itertools.pairwise(points):
        n = max(1, round(abs(b - a) / step))
        out += [a + (b - a) * k / n for k in range(1, n + 1)]
    return out


@pytest.mark.parametrize("chunk", [2, 3, 64])
def test_rainflow_on_the_astm_series_gives_the_known_cycles(chunk: int):
    soc_points = [0.5 + x / 20 for x in ASTM]
    lb = Logbook(config(depth_edges=DEPTH_EDGES, rainflow_chunk=chunk))
    f = Feeder(lb)
    for z in _ramp(soc_points, 0.005):
        f(soc=z)
    np.testing.assert_allclose(lb.cycle_depth_histogram(), ASTM_COUNTS, atol=1e-12)
    np.testing.assert_allclose(soc_turning_points(_ramp(soc_points, 0.005), 0.01), soc_points)
    np.testing.assert_allclose(rainflow_depth_counts(soc_points, DEPTH_EDGES), ASTM_COUNTS)
    # All cycles, any depth: 0.5 + 1.5 + 0.5 + 1 + 0.5.
    m = {x.name: x.value for x in lb.metrics()}
    assert m["rainflow_cycles"] == pytest.approx(4.0)


def test_rainflow_ignores_swings_below_the_hysteresis():
    lb = Logbook(config(rainflow_hysteresis_soc=0.02))
    f = Feeder(lb)
    for k in range(2000):  # 1 % wiggles around 0.5
        f(soc=0.5 + 0.005 * (-1) ** k)
    assert lb.cycle_depth_histogram().sum() == 0.0
    assert lb.rf_turning_points == 1  # the start only


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-0.08, 0.08), min_size=1, max_size=300),
    st.integers(2, 9),
    st.floats(0.002, 0.05),
)
def test_online_rainflow_equals_counting_the_whole_series(
    steps: list[float], chunk: int, hysteresis: float
):
    soc = np.clip(0.5 + np.cumsum(steps), 0.0, 1.0)
    lb = Logbook(config(rainflow_chunk=chunk, rainflow_hysteresis_soc=hysteresis))
    f = Feeder(lb)
    for z in soc:
        f(soc=float(z))
    tp = soc_turning_points(soc, hysteresis)
    # Strictly alternating turning points.
    d = np.diff(tp)
    assert np.all(d[:-1] * d[1:] < 0)
    expected = np.zeros(len(lb.config.depth_edges) - 1)
    if tp.size >= 3:  # the rainflow package itself, on the whole series
        inner = np.asarray(lb.config.depth_edges[1:-1])
        for rng, _mean, count, _i0, _i1 in rainflow.extract_cycles(list(tp)):
            expected[np.searchsorted(inner, rng, side="right")] += count
    elif tp.size == 2:
        expected[np.searchsorted(lb.config.depth_edges[1:-1], abs(tp[1] - tp[0]), "right")] = 0.5
    np.testing.assert_allclose(lb.cycle_depth_histogram(), expected, atol=1e-9)
    # The unclosed residue stays small (strictly decreasing ranges on a 0.001 grid).
    assert len(lb._rf_residue) + len(lb._rf_points) <= 2 + chunk + 1000


# --------------------------------------------------------------------------- periods


def test_periods_with_a_leaping_clock_and_merging_keep_the_totals():
    lb = Logbook(config(period_s=86400.0, max_periods=4))
    t = 1_700_006_400.0  # 2023-11-15 00:00 UTC, a day boundary
    rng = np.random.default_rng(3)
    lb.update(t, 0.0, 0.0, 50.0, 0.5, 0.5, 0.5, 3.2, 3.3, 20.0, 20.0, 20.0, 1.0, 100.0)
    for _day in range(11):
        for _ in range(24):  # hourly cycles, alternating charge and discharge
            t += 3600.0
            i = float(rng.choice([-40.0, 40.0]))
            lb.update(t, 3600.0, i, 50.0, 0.5, 0.5, 0.5, 3.2, 3.3, 20.0, 20.0, 20.0, 1.0, 100.0)
        t += 5 * 86400.0  # the clock leaps 5 days
    assert 2 <= len(lb.periods) <= 4
    cols = {c: k for k, c in enumerate(PERIOD_COLUMNS)}
    q_in = sum(r[cols["charge_in_ah"]] or 0.0 for r in lb.periods)
    q_in += lb.charge_in_ah - (lb._period_base["charge_in_ah"] or 0.0)
    assert q_in == pytest.approx(lb.charge_in_ah)
    el = sum(r[cols["elapsed_s"]] or 0.0 for r in lb.periods)
    el += lb.elapsed_s - (lb._period_base["elapsed_s"] or 0.0)
    assert el == pytest.approx(lb.elapsed_s)
    starts = [r[cols["start_s"]] for r in lb.periods]
    assert starts == sorted(starts)
    assert lb.periods[0][cols["start_s"]] == 1_700_006_400.0


# --------------------------------------------------------------------------- persistence


def _busy_logbook(n: int = 5000, seed: int = 7) -> tuple[Logbook, list[tuple[float, ...]]]:
    rng = np.random.default_rng(seed)
    lb = Logbook(config(period_s=3600.0, rainflow_chunk=8, nominal_resistance_ohm=0.05))
    rows: list[tuple[float, ...]] = []
    soc = 0.5
    t = T0
    for k in range(n):
        i = float(rng.normal(0, 60))
        soc = min(max(soc - i / 360000.0 * 10, 0.0), 1.0)
        temp = float(20 + 30 * math.sin(k / 300))
        vmin = 2.45 if k % 500 < 5 else 3.2  # a deep discharge every 500 cycles
        rows.append((t, 0.0 if k == 0 else 10.0, i, soc, temp, vmin))
        t += 10.0
    for r in rows[: n // 2]:
        _feed_row(lb, r, k=int(r[0]))
    return lb, rows


def _feed_row(lb: Logbook, r: tuple[float, ...], k: int) -> None:
    t, dt, i, soc, temp, vmin = r
    alarms = ("temperature_high:mol",) if temp > 45 else ()
    lb.update(
        t,
        dt,
        i,
        50.0,
        soc,
        soc - 0.01,
        soc + 0.01,
        vmin,
        vmin + 0.2,
        temp - 1,
        temp + 1,
        temp,
        0.99,
        99.0,
        0.06,
        alarms,
        -i * 49.0,
        k % 2,
    )


def test_to_dict_round_trip_continues_identically():
    lb, rows = _busy_logbook()
    d = lb.to_dict()
    text = json.dumps(d, allow_nan=False)  # strictly JSON (no NaN / Infinity)
    back = Logbook.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.n_deep_discharge > 0
    assert back.alarm_counts
    assert back.periods
    for r in rows[len(rows) // 2 :]:
        _feed_row(lb, r, k=int(r[0]))
        _feed_row(back, r, k=int(r[0]))
    assert back.to_dict() == lb.to_dict()
    assert [m.value for m in back.metrics()] == [m.value for m in lb.metrics()]
    assert Logbook.from_json(lb.to_json()).to_dict() == lb.to_dict()


def test_from_dict_rejects_bad_input_naming_the_field():
    lb, _ = _busy_logbook(200)
    d = lb.to_dict()
    with pytest.raises(ValueError, match="not an openbess logbook"):
        Logbook.from_dict({"format": "x"})
    with pytest.raises(ValueError, match="version 99"):
        Logbook.from_dict({**d, "version": 99})
    bad = json.loads(json.dumps(d))
    del bad["state"]["charge_in_ah"]
    with pytest.raises(ValueError, match=r"state\.charge_in_ah"):
        Logbook.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["state"]["hist_soc_temperature"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="hist_soc_temperature"):
        Logbook.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["config"]["soc_edges"] = [0.0, 0.5, 0.4]
    with pytest.raises(ValueError, match="soc_edges"):
        Logbook.from_dict(bad)
    with pytest.raises(ValueError, match="malformed"):
        Logbook.from_json("{not json")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nominal_capacity_ah", 0.0),
        ("nominal_energy_wh", math.inf),
        ("cell_voltage_max_v", 2.0),
        ("rainflow_hysteresis_soc", 0.001),
        ("rainflow_chunk", 1),
        ("temperature_edges_degc", (10.0,)),
        ("c_rate_edges", (0.0, math.nan, 1.0)),
        ("nominal_resistance_ohm", -1.0),
        ("rest_current_c", -0.1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def _run_db(tmp_path: Path, runs: int = 1) -> tuple[Path, list[int]]:
    db = tmp_path / "run.sqlite"
    ids = []
    with RunStore(db) as store:
        for k in range(runs):
            ids.append(store.start_run("home", {"k": k}, started_at_s=T0 + k))
            store.record_pack({"time_s": T0 + k, "soc": 0.5})
            store.end_run(T0 + k + 1)
    return db, ids


def test_save_and_load_through_the_run_database(tmp_path: Path):
    db, (rid,) = _run_db(tmp_path)
    lb, _ = _busy_logbook(500)
    save_logbook(db, rid, lb, time_s=T0 + 99.0)
    back, got_id, t = load_logbook(db)
    assert (got_id, t) == (rid, T0 + 99.0)
    assert back.to_dict() == lb.to_dict()
    # The run store still opens the database (its own tables are untouched).
    with RunStore(db, read_only=True) as store:
        assert list(store.list_runs()["id"]) == [rid]


def test_writer_snapshots_every_interval_and_keeps_the_newest(tmp_path: Path):
    db, (rid,) = _run_db(tmp_path)
    lb = Logbook(config())
    f = Feeder(lb)
    with LogbookWriter(db, rid, interval_s=900.0, keep=2, min_wall_s=0.0) as w:
        saved = []
        for _ in range(3601):  # one hour of 1 s cycles
            f(current_a=10.0)
            if w.maybe_save(lb, f.t):
                saved.append(f.t - T0)
        w.save(lb, f.t)  # the end of the run
        assert saved == [900.0, 1800.0, 2700.0, 3600.0]
        assert w.snapshots == 5
    with sqlite3.connect(db) as conn:
        times = [r[0] - T0 for r in conn.execute("SELECT time_s FROM logbook ORDER BY time_s")]
    conn.close()
    assert times == [3600.0, 3600.0]
    back, _, _ = load_logbook(db, rid)
    assert back.charge_out_ah == pytest.approx(lb.charge_out_ah)
    with pytest.raises(StorageError, match="closed"):
        w.save(lb, f.t)
    # In fast-forward, periodic snapshots are also spaced in wall time.
    with LogbookWriter(db, rid, interval_s=900.0, min_wall_s=1e6) as w2:
        due = [k for k in range(0, 7200, 60) if w2.maybe_save(lb, T0 + k)]
    assert due == [900]


def test_database_errors_name_the_file(tmp_path: Path):
    lb = Logbook(config())
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(StorageError, match=r"nope\.sqlite: no such run database"):
        save_logbook(missing, 1, lb, T0)
    with pytest.raises(StorageError, match=r"nope\.sqlite"):
        load_logbook(missing)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n" * 100)
    with pytest.raises(StorageError, match=r"notes\.txt"):
        load_logbook(text)
    with pytest.raises(StorageError, match=r"notes\.txt"):
        LogbookWriter(text, 1)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StorageError, match=r"other\.sqlite: not an openbess run database"):
        load_logbook(other)
    db, (rid,) = _run_db(tmp_path)
    with pytest.raises(StorageError, match="no logbook"):
        load_logbook(db)
    with pytest.raises(StorageError, match="no run 42"):
        save_logbook(db, 42, lb, T0)
    save_logbook(db, rid, lb, T0)
    with pytest.raises(StorageError, match="no run 42"):
        load_logbook(db, 42)
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE logbook SET json = \'{"format": "x"}\'')
    conn.close()
    with pytest.raises(DataError, match=rf"run\.sqlite: logbook of run {rid}"):
        load_logbook(db)
    with pytest.raises(ValueError, match="interval_s"):
        LogbookWriter(db, rid, interval_s=0.0)


def test_update_from_telemetry_uses_the_telemetry_fields():
    tel = Telemetry(
        time_s=T0,
        soc=0.4,
        soc_cell_min=0.39,
        soc_cell_max=0.41,
        soh=0.97,
        energy_available_wh=2000.0,
        capacity_wh=4850.0,
        pack_voltage_v=51.0,
        pack_current_a=-25.0,
        cell_voltage_min_v=3.1,
        cell_voltage_max_v=3.4,
        cell_voltage_avg_v=3.3,
        temperature_min_degc=-3.0,
        temperature_max_degc=20.0,
        temperature_avg_degc=10.0,
        charge_current_limit_a=50.0,
        discharge_current_limit_a=50.0,
        charge_power_limit_w=2500.0,
        discharge_power_limit_w=2500.0,
        contactor=ContactorState.CLOSED,
        alarms=("temperature_low:mol",),
        balancing_cells=0,
        gate=GateDecision(Outcome.ACCEPTED, Reason.NONE, 1, -1000.0, -1000.0),
    )
    lb = Logbook(config())
    lb.update_from_telemetry(tel, 0.0, capacity_ah=97.0)
    lb.update_from_telemetry(tel, 10.0, capacity_ah=97.0, ac_power_w=-1300.0)
    assert lb.charge_in_ah == pytest.approx(25.0 * 10 / 3600)
    assert lb.time_charging_cold_s == 10.0
    assert lb.alarm_counts == {"temperature_low:mol": 1}
    assert lb.capacity_last_ah == 97.0
    assert lb.soh_last == 0.97
    assert lb.energy_in_ac_wh == pytest.approx(1300.0 * 10 / 3600)
