"""Passive balancing: gates, power limit, hysteresis, duty cycle, invariants, a closed loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.balancing import (
    RESELECT_S,
    Balancer,
    BalancingConfig,
    select_top,
)
from openbess.bms.estimator import SocEstimator
from openbess.cell.ecm import CellModel
from openbess.cell.params import load_cell_params, scale_to_capacity
from openbess.twin.pack import Pack, PackTopology

N = 16
CAP = np.full(N, 100.0)
OK = np.ones(N, dtype=bool)


def make(
    strategy: str = "soc",
    n_strings: int = 1,
    n_series: int = N,
    cells_per_module: int | None = None,
    **kw: object,
) -> Balancer:
    """A balancer with the rules under test isolated: no settling, always on, no power limit."""
    base: dict[str, object] = {
        "strategy": strategy,
        "settle_s": 0.0,
        "duty_cycle": 1.0,
        "max_bleed_power_w": math.inf,
    }
    base.update(kw)
    config = BalancingConfig(**base)  # type: ignore[arg-type]
    return Balancer(config, n_strings, n_series, cells_per_module)


def spread_soc(n: int = N, lo: float = 0.50, step: float = 0.002) -> np.ndarray:
    return lo + step * np.arange(n)


def call(
    bal: Balancer,
    soc: np.ndarray,
    *,
    t: float = 1.0,
    dt: float = 1.0,
    v: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    current_a: float = 0.0,
    t_max: float = 25.0,
    closed: bool = True,
    cap: np.ndarray | None = None,
) -> np.ndarray:
    n = soc.size
    return bal.update(
        t,
        dt,
        soc,
        np.full(n, 100.0) if cap is None else cap,
        np.full(n, 3.35) if v is None else v,
        np.ones(n, dtype=bool) if valid is None else valid,
        current_a,
        t_max,
        closed,
    )


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strategy", "fancy"),
        ("alignment", "middle"),
        ("power_scope", "rack"),
        ("soc_threshold", 0.0),
        ("soc_hysteresis", -0.001),
        ("voltage_threshold_v", math.nan),
        ("bleed_resistance_ohm", 0.0),
        ("max_bleed_power_w", -1.0),
        ("rest_current_a", -0.1),
        ("settle_s", math.inf),
        ("duty_cycle", 0.0),
        ("duty_cycle", 1.5),
        ("min_voltage_v", math.nan),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"BalancingConfig.{field}"):
        BalancingConfig(**{field: value})  # type: ignore[arg-type]


def test_hysteresis_must_leave_a_positive_stop_level() -> None:
    with pytest.raises(ValueError, match="soc_hysteresis must be below soc_threshold"):
        BalancingConfig(soc_threshold=0.003, soc_hysteresis=0.003)
    with pytest.raises(ValueError, match="voltage_hysteresis_v must be below"):
        BalancingConfig(voltage_threshold_v=0.01, voltage_hysteresis_v=0.02)


def test_chemistry_defaults() -> None:
    assert BalancingConfig.for_chemistry("LFP").min_voltage_v == 3.40
    assert BalancingConfig.for_chemistry("nmc", duty_cycle=0.5).duty_cycle == 0.5
    assert BalancingConfig.for_chemistry("NMC811").min_voltage_v == 3.90
    with pytest.raises(ValueError, match="unknown chemistry 'lto'"):
        BalancingConfig.for_chemistry("lto")


def test_balancer_rejects_a_module_size_that_does_not_divide_the_string() -> None:
    with pytest.raises(ValueError, match="cells_per_module must be an integer >= 1 dividing"):
        Balancer(BalancingConfig(), 1, 16, 5)
    with pytest.raises(ValueError, match="n_series must be an integer >= 1"):
        Balancer(BalancingConfig(), 1, 0)


# ------------------------------------------------------------------------------- rules
def test_soc_strategy_bleeds_cells_above_the_lowest_by_the_threshold() -> None:
    bal = make(soc_threshold=0.005, soc_hysteresis=0.002)
    soc = spread_soc()  # 0.500, 0.502, ... 0.530
    mask = call(bal, soc)
    np.testing.assert_array_equal(mask, soc - soc.min() > 0.005)
    assert bal.n_balancing == int(mask.sum()) == 13
    assert bal.inhibit == ""
    np.testing.assert_allclose(bal.bleed_current_a, np.where(mask, 3.35 / 33.0, 0.0))
    with pytest.raises(ValueError, match="read-only"):
        mask[0] = True  # handed-out arrays cannot be changed under the balancer


def test_not_while_discharging_but_at_rest_charging_and_with_contactors_open() -> None:
    soc = spread_soc()
    bal = make(rest_current_a=1.0)
    assert not call(bal, soc, current_a=5.0).any()
    assert bal.inhibit == "discharging"
    assert call(bal, soc, current_a=0.9).any()  # rest: within the rest current
    assert call(bal, soc, current_a=-40.0).any()  # charging
    assert call(bal, soc, current_a=5.0, closed=False).any()  # open contactors: rest
    assert not call(bal, soc, current_a=math.nan).any()
    assert bal.inhibit == "current_unknown"
    rest_only = make(allow_charging=False)
    assert not call(rest_only, soc, current_a=-40.0).any()
    assert rest_only.inhibit == "charging"
    assert call(rest_only, soc, current_a=0.0).any()


def test_not_above_the_temperature_limit_or_without_a_temperature() -> None:
    soc = spread_soc()
    bal = make(max_temperature_degc=45.0)
    assert call(bal, soc, t_max=45.0).any()
    assert not call(bal, soc, t_max=45.1).any()
    assert bal.inhibit == "temperature"
    assert not call(bal, soc, t_max=math.nan).any()
    assert bal.inhibit == "temperature_unknown"
    assert not call(make(enabled=False), soc).any()


def test_invalid_voltage_or_unknown_soc_never_bleeds() -> None:
    soc = spread_soc()
    valid = OK.copy()
    valid[-1] = False  # the highest cell cannot be seen
    mask = call(make(), soc, valid=valid)
    assert not mask[-1]
    assert mask[-2]
    soc_nan = soc.copy()
    soc_nan[3] = math.nan
    assert not call(make(), soc_nan).any()


def test_power_limit_respected_and_the_most_charged_cells_chosen() -> None:
    rng = np.random.default_rng(3)
    soc = rng.permutation(spread_soc())
    v = np.full(N, 3.5)
    per_cell_w = 3.5**2 / 33.0
    # Pack scope: the 4 cells highest above the lowest.
    bal = make(max_bleed_power_w=4.3 * per_cell_w, power_scope="pack")
    mask = call(bal, soc, v=v)
    assert mask.sum() == 4
    np.testing.assert_array_equal(np.sort(np.flatnonzero(mask)), np.sort(np.argsort(soc)[-4:]))
    assert (mask * v**2 / 33.0).sum() <= bal.config.max_bleed_power_w
    # Module scope, two modules of 8: 2 cells in each, the two highest of each module.
    bal = make(max_bleed_power_w=2.5 * per_cell_w, cells_per_module=8)
    mask = call(bal, soc, v=v)
    for m in range(2):
        part = slice(8 * m, 8 * m + 8)
        assert mask[part].sum() == 2
        top2 = set(np.argsort(soc[part])[-2:])
        assert set(np.flatnonzero(mask[part])) == top2
    # Less than one cell's power: nothing, and it says why.
    bal = make(max_bleed_power_w=0.5 * per_cell_w)
    assert not call(bal, soc, v=v).any()
    assert bal.inhibit == "power_limit"


def test_power_limited_selection_rotates_to_the_most_charged_only_past_the_hysteresis() -> None:
    per_cell_w = 3.35**2 / 33.0
    bal = make(max_bleed_power_w=1.5 * per_cell_w, soc_threshold=0.003, soc_hysteresis=0.002)
    soc = np.array([0.50, 0.51, 0.5095] + [0.50] * 13)
    assert np.flatnonzero(call(bal, soc, t=0.0)).tolist() == [1]
    # Cell 2 overtakes cell 1 by less than the hysteresis: cell 1 keeps bleeding, even at
    # the periodic re-selection.
    soc2 = soc.copy()
    soc2[1] = 0.5090
    assert np.flatnonzero(call(bal, soc2, t=2 * RESELECT_S)).tolist() == [1]
    # By more than the hysteresis: cell 2 takes over at the next re-selection.
    soc2[1] = 0.5070
    assert np.flatnonzero(call(bal, soc2, t=4 * RESELECT_S)).tolist() == [2]


def test_hysteresis_prevents_chattering_around_the_threshold() -> None:
    rng = np.random.default_rng(11)

    def switches(hysteresis: float) -> int:
        bal = make(soc_threshold=0.004, soc_hysteresis=hysteresis)
        last, count = False, 0
        for k in range(400):
            soc = np.full(N, 0.5)
            # Cell 5 sits on the threshold; estimate noise of +-0.0005.
            soc[5] = 0.504 + rng.uniform(-0.0005, 0.0005)
            on = bool(call(bal, soc, t=float(k))[5])
            count += on != last
            last = on
        return count

    assert switches(0.002) == 1  # switched on once, stays on
    assert switches(0.0) > 50  # without hysteresis it follows the noise


def test_duty_cycle_and_counters() -> None:
    bal = make(duty_cycle=0.8)
    soc = spread_soc()
    v = np.full(N, 3.3)
    on = 0
    for k in range(100):
        on += bool(call(bal, soc, t=float(k), v=v).any())
        if k == 3:
            assert bal.inhibit in ("", "measuring")
    assert on == 80  # 4 cycles on, 1 measuring, exactly
    wanted = bal.wanted
    call(bal, soc, t=100.0, v=v, current_a=50.0)  # books the last interval, then stops
    i = 3.3 / 33.0
    expected_s = np.where(wanted, 80.0, 0.0)
    np.testing.assert_allclose(bal.balancing_time_s, expected_s)
    np.testing.assert_allclose(bal.charge_bled_ah, expected_s * i / 3600.0)
    np.testing.assert_allclose(bal.energy_bled_wh, expected_s * i * 3.3 / 3600.0)
    assert bal.total_energy_bled_wh == pytest.approx(float(wanted.sum()) * 80 * i * 3.3 / 3600)


def test_events_mark_start_and_end() -> None:
    bal = make()
    call(bal, spread_soc(), t=10.0)
    call(bal, np.full(N, 0.5), t=20.0)
    events = bal.pop_events()
    assert [(e.time_s, e.code) for e in events] == [
        (10.0, "balancing_started"),
        (20.0, "balancing_finished"),
    ]
    assert bal.pop_events() == []


def test_each_string_is_balanced_against_its_own_lowest_cell() -> None:
    bal = make(n_strings=2, n_series=4)
    soc = np.array([0.50, 0.52, 0.50, 0.50, 0.70, 0.70, 0.71, 0.70])
    mask = call(bal, soc)
    assert mask.tolist() == [False, True, False, False, False, False, True, False]


def test_top_alignment_uses_the_capacities() -> None:
    # Equal SoC, unequal capacities: top-aligned, the 110 Ah cell has 10 Ah more headroom
    # (fine); a cell with 2 Ah less headroom than the limiting cell bleeds.
    cap = np.array([100.0, 110.0, 100.0, 100.0])
    soc = np.array([0.5, 0.5, 0.52, 0.5])
    top = make("soc", n_series=4, alignment="top")
    assert call(top, soc, cap=cap).tolist() == [False, False, True, False]
    # Equalising the SoC instead ignores capacity differences at equal SoC.
    assert call(make("soc", n_series=4), soc, cap=cap).tolist() == [False, False, True, False]
    soc_b = np.array([0.5, 0.53, 0.5, 0.5])  # 5.8 Ah more charge, 10 Ah more capacity
    assert not call(make("soc", n_series=4, alignment="top"), soc_b, cap=cap).any()
    assert call(make("soc", n_series=4), soc_b, cap=cap).tolist() == [False, True, False, False]


def test_voltage_strategy_only_near_the_top_of_charge() -> None:
    bal = make("voltage", voltage_threshold_v=0.010, voltage_hysteresis_v=0.005)
    v = np.full(N, 3.42)
    v[2] = 3.45
    v[7] = 3.40  # the lowest
    mask = call(bal, np.full(N, math.nan), v=v)  # the voltage strategy needs no SoC
    np.testing.assert_array_equal(mask, np.arange(N) != 7)
    flat = np.full(N, 3.30)
    flat[2] = 3.33  # 30 mV higher, but on the flat part of the LFP curve
    assert not call(make("voltage"), np.full(N, 0.5), v=flat).any()


def test_soc_strategy_waits_for_a_settled_rest_and_then_carries_the_charge() -> None:
    cfg = BalancingConfig(settle_s=1800.0, duty_cycle=1.0, max_bleed_power_w=math.inf)
    bal = Balancer(cfg, 1, 4)
    soc = np.array([0.50, 0.51, 0.50, 0.50])  # cell 1: 1 Ah above on a 100 Ah cell
    cap = np.full(4, 100.0)
    v = np.full(4, 3.3)
    i_bleed = 3.3 / 33.0
    t = 0.0
    # Charging from the start: no reading yet.
    for _ in range(10):
        t += 60.0
        assert not bal.update(t, 60.0, soc, cap, v, OK[:4], -20.0, 25.0, True).any()
    assert bal.inhibit == "settling"
    # Rest, but not settled yet.
    for _ in range(29):
        t += 60.0
        assert not bal.update(t, 60.0, soc, cap, v, OK[:4], 0.0, 25.0, True).any()
    t += 60.0
    assert bal.update(t, 60.0, soc, cap, v, OK[:4], 0.0, 25.0, True).tolist() == [
        False,
        True,
        False,
        False,
    ]
    # Charging: the estimates drift (cell 2 looks high, cell 1 low), the carried excess
    # decides; cell 1 stops once its 1 Ah minus the stop level (0.1 %) is bled.
    drifted = np.array([0.60, 0.59, 0.62, 0.60])
    stop_h = (0.01 - 0.001) * 100.0 / i_bleed
    on_h = 0.0
    while True:
        t += 60.0
        mask = bal.update(t, 60.0, drifted, cap, v, OK[:4], -20.0, 25.0, True)
        assert not mask[[0, 2, 3]].any()
        if not mask[1]:
            break
        on_h += 60.0 / 3600.0
        assert on_h < stop_h + 0.1
    assert on_h == pytest.approx(stop_h, abs=0.05)
    assert bal.charge_bled_ah[1] == pytest.approx(0.009 * 100.0, abs=0.01)


# ------------------------------------------------------------------------------- selection
def test_select_top_takes_the_k_highest_candidates_per_group() -> None:
    cand = np.array([True, True, False, True, True, True, True, False])
    prio = np.array([5.0, 1.0, 9.0, 3.0, 0.5, 2.0, 7.0, 8.0])
    sel, most = select_top(cand, prio, 2, 4)
    assert sel.tolist() == [True, False, False, True, False, True, True, False]
    assert most == 2
    sel, most = select_top(cand, prio, 10, 4)
    np.testing.assert_array_equal(sel, cand)
    assert most == 3
    assert not select_top(cand, prio, 0, 4)[0].any()


# ------------------------------------------------------------------------------- invariants
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    n_strings=st.integers(1, 3),
    modules=st.integers(1, 3),
    per_module=st.integers(1, 6),
    strategy=st.sampled_from(["soc", "voltage"]),
    alignment=st.sampled_from(["soc", "top"]),
    power_scope=st.sampled_from(["module", "pack"]),
    max_power=st.sampled_from([math.inf, 0.5, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 6),
)
def test_mask_shape_lowest_cell_validity_and_power_invariants(
    n_strings: int,
    modules: int,
    per_module: int,
    strategy: str,
    alignment: str,
    power_scope: str,
    max_power: float,
    seed: int,
    steps: int,
) -> None:
    rng = np.random.default_rng(seed)
    n_series = modules * per_module
    n = n_strings * n_series
    cfg = BalancingConfig(
        strategy=strategy,  # type: ignore[arg-type]
        alignment=alignment,  # type: ignore[arg-type]
        power_scope=power_scope,  # type: ignore[arg-type]
        max_bleed_power_w=max_power,
        settle_s=0.0,
        duty_cycle=1.0,
        soc_threshold=0.002,
        soc_hysteresis=0.0015,
        min_voltage_v=3.0,
    )
    bal = Balancer(cfg, n_strings, n_series, per_module)
    cap = rng.uniform(60.0, 140.0, n)
    for k in range(steps):
        soc = rng.uniform(0.0, 1.0, n) if k % 2 else 0.5 + rng.uniform(-0.02, 0.02, n)
        v = rng.uniform(3.0, 3.6, n)
        valid = rng.random(n) > 0.1
        mask = bal.update(float(k), 1.0, soc, cap, v, valid, 0.0, 25.0, True)
        assert mask.shape == (n,)
        assert mask.dtype == np.bool_
        assert not (mask & ~valid).any()
        groups = mask.reshape(n_strings, n_series)
        key = (soc if strategy == "soc" else np.where(valid, v, np.inf)).reshape(groups.shape)
        lowest = np.argmin(key, axis=1)
        assert not groups[np.arange(n_strings), lowest].any()
        size = per_module if power_scope == "module" else n
        power = (mask * v**2 / cfg.bleed_resistance_ohm).reshape(-1, size).sum(axis=1)
        assert (power <= max_power * (1 + 1e-9)).all()


# ------------------------------------------------------------------------------- closed loop
def test_closed_loop_on_a_twin_pack_shrinks_the_spread() -> None:
    """A 6-cell pack at rest: the Balancer decides from SocEstimator estimates (the bleed
    charge counted in the estimate); the true SoC spread shrinks from 5 % to within 0.5 %."""
    cell = scale_to_capacity(load_cell_params("lfp"), 20.0)
    pack = Pack(cell, PackTopology(1, 1, 6), initial_soc=0.95, ambient_degc=25.0, compiled=False)
    z0 = np.array([0.93, 0.96, 0.98, 0.945, 0.97, 0.955])
    pack.set_cell_soc(z0)
    pack.step(0.0, 1.0)  # the voltages follow the new SoC after a step
    est = SocEstimator(CellModel(cell), 6)
    cfg = BalancingConfig(max_bleed_power_w=1.2)  # 3 cells at a time
    bal = Balancer(cfg, 1, 6)
    valid = np.ones(6, dtype=bool)
    dt = 120.0
    est.update(0.0, 0.0, pack.cell_voltage_v, valid, pack.cell_temperature_degc)
    for k in range(1, 1100):
        v = pack.cell_voltage_v
        est.update(dt, 0.0, v, valid, pack.cell_temperature_degc)
        dq_ah = bal.bleed_current_a * (dt / 3600.0)  # the bleed of the last interval
        est.soc = np.clip(est.soc - dq_ah / est.capacity_ah, 0.0, 1.0)
        mask = bal.update(k * dt, dt, est.soc, est.capacity_ah, v, valid, 0.0, 25.0, True)
        pack.step(0.0, dt, balancing=mask, bleed_resistance_ohm=cfg.bleed_resistance_ohm)
    spread = float(np.ptp(pack.cell_soc))
    assert spread < 0.005
    # The lowest cell was never bled, the others about down to it.
    assert bal.charge_bled_ah[0] == 0.0
    np.testing.assert_allclose(bal.charge_bled_ah, (z0 - 0.93) * 20.0, atol=0.1)
    # The Balancer's energy count agrees with the twin's bleed energy.
    twin_wh = pack.energy_balance().bleed_j / 3600.0
    assert bal.total_energy_bled_wh == pytest.approx(twin_wh, rel=0.01)
