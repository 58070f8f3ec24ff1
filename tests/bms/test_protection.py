"""Protection: the fault table, debounce, hysteresis, latching, invalid readings (cycle tables)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.defaults import default_params, known_chemistries
from openbess.bms.protection import (
    Blocks,
    Direction,
    EventKind,
    FaultRule,
    Protection,
    ProtectionInputs,
    Quantity,
    Tier,
    fault_table,
    quantity_value,
    quantity_values,
)
from openbess.errors import ConfigError

PARAMS = default_params("lfp", 100.0)
P = PARAMS.protection
NAN = math.nan


def nominal(**overrides: float | int | bool) -> ProtectionInputs:
    """A healthy 16S LFP pack at rest-ish (5 A discharge), 25 degC."""
    base = ProtectionInputs(
        cell_voltage_max_v=3.32,
        cell_voltage_min_v=3.30,
        temperature_max_degc=26.0,
        temperature_min_degc=24.0,
        pack_current_a=5.0,
        pack_voltage_v=52.96,
        sum_cell_voltage_v=52.96,
        ems_link_age_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


class Cycle:
    """OpenEMS-style cycle driver: a protection and a clock that leaps forward."""

    def __init__(self, protection: Protection | None = None) -> None:
        self.prot = protection if protection is not None else Protection.from_params(P)
        self.t = 1.0e9

    def run(self, steps):
        """Steps of (leap_s, overrides of the nominal inputs) -> list of results."""
        out = []
        for leap_s, overrides in steps:
            self.t += leap_s
            out.append(self.prot.evaluate(self.t, nominal(**overrides)))
        return out

    def reset(self, code, **overrides):
        return self.prot.reset(code, self.t, nominal(**overrides))


def tier_of(result, code):
    return dict(result.alarms).get(code)


# ---------------------------------------------------------------------------------- table


def test_default_table_has_one_row_per_cause_and_nominal_pack_is_quiet():
    prot = Protection.from_params(P)
    codes = [r.code for r in prot.table]
    assert len(codes) == len(set(codes)) == 15
    for chem in known_chemistries():
        params = default_params(chem, 50.0)
        prot = Protection.from_params(params.protection)
        v_nom = 3.30 if chem == "lfp" else 3.70
        t = 0.0
        for _ in range(200):
            r = prot.evaluate(
                t,
                nominal(
                    cell_voltage_max_v=v_nom + 0.01,
                    cell_voltage_min_v=v_nom,
                    pack_current_a=-40.0,
                    pack_voltage_v=16 * v_nom,
                    sum_cell_voltage_v=16 * v_nom,
                ),
            )
            t += 1.0
        assert r.alarms == ()
        assert (r.open_contactors, r.allow_charge, r.allow_discharge) == (False, True, True)


def test_fault_rule_validation_names_row_and_field():
    with pytest.raises(ConfigError, match=r"'bad_row'.*rise from MOL to MSL"):
        FaultRule(
            "bad_row",
            Quantity.CELL_VOLTAGE_MAX,
            Direction.ABOVE,
            (3.6, 3.5, 3.7),
            (1.0, 1.0, 1.0),
            0.05,
            10.0,
            Blocks.CHARGE,
        )
    with pytest.raises(ConfigError, match=r"'low'.*fall from MOL to MSL"):
        FaultRule(
            "low",
            Quantity.CELL_VOLTAGE_MIN,
            Direction.BELOW,
            (2.8, 2.9, None),
            (1.0, 1.0, 1.0),
            0.05,
            10.0,
            Blocks.DISCHARGE,
        )
    with pytest.raises(ConfigError, match=r"'neg'.*set_delay_s"):
        FaultRule(
            "neg",
            Quantity.EMS_LINK_AGE,
            Direction.ABOVE,
            (1.0, None, None),
            (-1.0, 0.0, 0.0),
            0.0,
            0.0,
            Blocks.NONE,
        )
    table = fault_table(P)
    with pytest.raises(ConfigError, match="duplicate codes: cell_overvoltage"):
        Protection((*table, table[0]))


# ---------------------------------------------------------------------------------- debounce


def test_overvoltage_debounce_hysteresis_and_clear_delay_cycle_table():
    # LFP: MOL 3.55, RSL 3.60, MSL 3.65 V; set delay 2 s; hysteresis 0.05 V; clear delay 30 s.
    # (leap_s, cell_voltage_max_v, expected tier, allow_charge)
    table = [
        (0, 3.40, None, True),
        (1, 3.56, None, True),  # MOL seen once
        (1, 3.40, None, True),  # glitch gone: timer restarts
        (1, 3.56, None, True),
        (1, 3.56, None, True),  # 1 s
        (1, 3.56, Tier.MOL, True),  # 2 s: raised
        (1, 3.61, Tier.MOL, True),  # RSL seen
        (2, 3.61, Tier.RSL, False),  # RSL after 2 s: charge blocked
        (1, 3.57, Tier.RSL, False),  # below RSL but inside hysteresis (3.55): held
        (1, 3.54, Tier.RSL, False),  # out of RSL band: clear delay starts
        (29, 3.54, Tier.RSL, False),
        (1, 3.54, Tier.MOL, True),  # 30 s later: lowered to MOL (3.54 > 3.50)
        (1, 3.45, Tier.MOL, True),
        (29, 3.45, Tier.MOL, True),
        (1, 3.45, None, True),  # cleared
    ]
    cy = Cycle()
    results = cy.run([(leap, {"cell_voltage_max_v": v}) for leap, v, _, _ in table])
    for k, (r, (_, v, tier, allow)) in enumerate(zip(results, table, strict=True)):
        assert tier_of(r, "cell_overvoltage") == tier, (k, v)
        assert r.allow_charge is allow, (k, v)
        assert r.allow_discharge is True
        assert r.open_contactors is False
    kinds = [(e.kind, e.tier) for r in results for e in r.events]
    assert kinds == [
        (EventKind.RAISED, Tier.MOL),
        (EventKind.RAISED, Tier.RSL),
        (EventKind.LOWERED, Tier.MOL),
        (EventKind.CLEARED, None),
    ]


def test_leaping_clock_single_sample_never_trips_but_two_do():
    cy = Cycle()
    r = cy.run([(0, {"cell_voltage_max_v": 3.70}), (60, {}), (60, {})])
    assert [x.open_contactors for x in r] == [False, False, False]
    r = cy.run([(60, {"cell_voltage_max_v": 3.70}), (60, {"cell_voltage_max_v": 3.70})])
    assert [x.open_contactors for x in r] == [False, True]
    assert tier_of(r[1], "cell_overvoltage") is Tier.MSL
    assert "3.65 V" in r[1].events[0].message


def test_overcurrent_trips_faster_than_it_warns():
    # MSL 1.2 C after 0.32 s; MOL/RSL after 1 s.
    cy = Cycle()
    r = cy.run([(0, {"pack_current_a": 125.0}), (0.5, {"pack_current_a": 125.0})])
    assert tier_of(r[1], "discharge_overcurrent") is Tier.MSL
    assert r[1].open_contactors
    assert not r[1].allow_discharge
    assert not r[1].allow_charge


# ---------------------------------------------------------------------------------- latching


def test_msl_latches_and_reset_is_refused_while_cause_persists():
    cy = Cycle()
    r = cy.run([(0, {"cell_voltage_max_v": 3.70}), (2, {"cell_voltage_max_v": 3.70})])
    assert r[-1].open_contactors
    assert r[-1].latched == ("cell_overvoltage",)
    # Below MSL but inside its hysteresis: still latched, reset refused with the reason.
    r = cy.run([(100, {"cell_voltage_max_v": 3.62})])
    assert r[0].open_contactors
    prot, t = cy.prot, cy.t
    ok, reason = prot.reset("cell_overvoltage", t, nominal(cell_voltage_max_v=3.62))
    assert not ok
    assert "still above 3.6 V" in reason
    assert "MSL 3.65 V" in reason
    ok, reason = prot.reset("cell_overvoltage", t, nominal(cell_voltage_max_v=NAN))
    assert not ok
    assert "invalid" in reason
    assert prot.reset("no_such_fault", t, nominal()) == (
        False,
        "unknown fault code 'no_such_fault'; known: " + ", ".join(r.code for r in prot.table),
    )
    ok, reason = prot.reset("cell_undervoltage", t, nominal())
    assert (ok, reason) == (False, "cell_undervoltage is not latched")
    # Cause gone (3.58 V < 3.60 V): reset; the row restarts at the tier the value warrants.
    ok, _ = prot.reset("cell_overvoltage", t, nominal(cell_voltage_max_v=3.58))
    assert ok
    r = prot.evaluate(t + 1, nominal(cell_voltage_max_v=3.58))
    assert not r.open_contactors
    assert r.latched == ()
    assert tier_of(r, "cell_overvoltage") is Tier.RSL
    assert not r.allow_charge
    assert [e.kind for e in r.events] == [EventKind.RESET]


def test_msl_of_charge_temperature_counts_only_while_charging():
    cy = Cycle()
    cold = {"temperature_min_degc": -8.0, "pack_current_a": 0.0}  # below MSL -5 degC, at rest
    r = cy.run([(0, cold), (10, cold), (600, cold)])
    assert tier_of(r[-1], "charge_undertemperature") is Tier.RSL
    assert not r[-1].open_contactors
    assert not r[-1].allow_charge
    assert r[-1].allow_discharge
    charging = {**cold, "pack_current_a": -20.0}
    r = cy.run([(1, charging), (5, charging)])
    assert tier_of(r[-1], "charge_undertemperature") is Tier.MSL
    assert r[-1].open_contactors


# ---------------------------------------------------------------------------------- invalid


def test_invalid_voltage_holds_fault_and_escalates_by_its_own_row():
    cy = Cycle()
    r = cy.run([(0, {"cell_voltage_max_v": 3.56}), (2, {"cell_voltage_max_v": 3.56})])
    assert tier_of(r[-1], "cell_overvoltage") is Tier.MOL
    lost = {"cell_voltage_max_v": NAN, "cell_voltage_min_v": NAN, "sum_cell_voltage_v": NAN}
    r = cy.run([(1, lost), (2, lost), (3, lost), (24, lost), (1, lost), (3600, lost)])
    # The overvoltage row is held (never cleared by missing data), one sensor alarm escalates.
    for x in r:
        assert tier_of(x, "cell_overvoltage") is Tier.MOL
        assert {c for c, _ in x.alarms} <= {"cell_overvoltage", "cell_voltage_invalid"}
    assert [tier_of(x, "cell_voltage_invalid") for x in r] == [
        None,
        Tier.MOL,
        Tier.RSL,
        Tier.RSL,
        Tier.MSL,
        Tier.MSL,
    ]
    assert not r[2].allow_charge
    assert not r[2].allow_discharge
    assert not r[2].open_contactors
    assert r[4].open_contactors
    raised = [e for x in r for e in x.events if e.kind is EventKind.RAISED]
    assert len(raised) == 3  # no storm: MOL, RSL, MSL of one alarm


def test_invalid_reading_does_not_stop_a_pending_trip():
    cy = Cycle()
    r = cy.run(
        [
            (0, {"cell_voltage_max_v": 3.70}),
            (1, {"cell_voltage_max_v": NAN}),
            (1, {"cell_voltage_max_v": NAN}),
        ],
    )
    assert r[-1].open_contactors
    assert tier_of(r[-1], "cell_overvoltage") is Tier.MSL


def test_all_temperatures_invalid_blocks_charge_after_delay_never_opens():
    cy = Cycle()
    blind = {"temperature_max_degc": NAN, "temperature_min_degc": NAN, "n_invalid_temperature": 8}
    r = cy.run([(0, blind), (2, blind), (3, blind), (86400, blind)])
    assert [tier_of(x, "temperature_invalid") for x in r] == [None, Tier.MOL, Tier.RSL, Tier.RSL]
    assert [x.allow_charge for x in r] == [True, True, False, False]
    assert all(x.allow_discharge and not x.open_contactors for x in r)
    some = {"n_invalid_temperature": 1}
    cy = Cycle()
    r = cy.run([(0, some), (2, some), (600, some)])
    assert tier_of(r[-1], "temperature_invalid") is Tier.MOL
    assert r[-1].allow_charge


def test_unknown_current_counts_as_flowing_for_direction_gated_trips():
    cy = Cycle()
    cold_blind = {"temperature_min_degc": -8.0, "current_valid": False}
    r = cy.run([(0, cold_blind), (5, cold_blind)])
    assert tier_of(r[-1], "charge_undertemperature") is Tier.MSL
    assert tier_of(r[-1], "current_invalid") is Tier.RSL
    assert r[-1].open_contactors


def test_ems_link_loss_is_one_warning_and_nothing_else():
    cy = Cycle()
    steps = [(0, {"ems_link_age_s": 10.0})]
    steps += [(60, {"ems_link_age_s": 61.0 + 60 * k}) for k in range(50)]
    steps += [(1, {"ems_link_age_s": NAN}), (1, {"ems_link_age_s": 0.5})]
    r = cy.run(steps)
    assert all(x.alarms == (("ems_link_lost", Tier.MOL),) for x in r[1:-1])
    assert all(x.allow_charge and x.allow_discharge and not x.open_contactors for x in r)
    events = [e for x in r for e in x.events]
    assert [(e.code, e.kind) for e in events] == [
        ("ems_link_lost", EventKind.RAISED),
        ("ems_link_lost", EventKind.CLEARED),
    ]


def test_time_going_backwards_is_rejected():
    prot = Protection.from_params(P)
    prot.evaluate(10.0, nominal())
    with pytest.raises(ValueError, match="backwards"):
        prot.evaluate(9.0, nominal())


# ---------------------------------------------------------------------------------- properties

anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, math.inf, -math.inf, 0.0]),
)


@st.composite
def other_inputs(draw):
    return {
        "cell_voltage_min_v": draw(anything),
        "temperature_max_degc": draw(anything),
        "temperature_min_degc": draw(anything),
        "pack_current_a": draw(anything),
        "pack_voltage_v": draw(anything),
        "sum_cell_voltage_v": draw(anything),
        "ems_link_age_s": draw(anything),
        "n_invalid_voltage": draw(st.integers(0, 500)),
        "n_invalid_temperature": draw(st.integers(0, 500)),
        "current_valid": draw(st.booleans()),
    }


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    warmup=st.lists(other_inputs(), max_size=4),
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 120.0),
            st.floats(3.6501, 100.0),
            other_inputs(),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_overvoltage_above_msl_for_the_delay_always_opens(warmup, steps):
    prot = Protection.from_params(P)
    t = 0.0
    for other in warmup:
        prot.evaluate(t, nominal(cell_voltage_max_v=3.3, **other))
        t += 1.0
    start = t
    result = None
    for dt, v, other in steps:
        t += dt
        result = prot.evaluate(t, nominal(cell_voltage_max_v=v, **other))
    t += P.cell_voltage_set_delay_s
    result = prot.evaluate(t, nominal(cell_voltage_max_v=3.7, **steps[-1][2]))
    assert t - start >= P.cell_voltage_set_delay_s
    assert result.open_contactors
    assert not result.allow_charge
    assert not result.allow_discharge
    assert dict(result.alarms)["cell_overvoltage"] is Tier.MSL


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 100.0),
            st.one_of(st.just(NAN), st.floats(3.0, 3.8)),
            other_inputs(),
        ),
        min_size=2,
        max_size=20,
    )
)
def test_an_invalid_reading_never_lowers_a_tier(steps):
    prot = Protection.from_params(P)
    t = 0.0
    previous = None
    for dt, v, other in steps:
        t += dt
        r = prot.evaluate(t, nominal(cell_voltage_max_v=v, **other))
        tier = prot.tier("cell_overvoltage") or 0
        if math.isnan(v) and previous is not None:
            assert tier >= previous
        previous = tier
        assert len(r.alarms) == len({c for c, _ in r.alarms})  # one alarm per cause


# ----------------------------------------------------------------- quiet-row shortcut, cache


class FullStepProtection(Protection):
    """Reference: every row through the full step, the result rebuilt every time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # NaN as the mildest threshold: the quiet-row comparison is never true.
        self._quiet_check = tuple((r, s, NAN, above) for r, s, _, above in self._quiet_check)

    def evaluate(self, time_s, inputs):
        self._steady = None
        return super().evaluate(time_s, inputs)


def same_float(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def near(lo, hi):
    return st.one_of(st.floats(lo, hi), st.just(NAN), st.just(math.inf))


@st.composite
def cycle_inputs(draw):
    return {
        "cell_voltage_max_v": draw(near(3.2, 3.8)),
        "cell_voltage_min_v": draw(near(2.3, 3.3)),
        "temperature_max_degc": draw(near(20.0, 70.0)),
        "temperature_min_degc": draw(near(-30.0, 20.0)),
        "pack_current_a": draw(near(-250.0, 250.0)),
        "pack_voltage_v": draw(near(50.0, 56.0)),
        "sum_cell_voltage_v": draw(near(50.0, 56.0)),
        "ems_link_age_s": draw(near(0.0, 200.0)),
        "n_invalid_voltage": draw(st.integers(0, 2)),
        "n_invalid_temperature": draw(st.integers(0, 2)),
        "current_valid": draw(st.booleans()),
    }


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 10.0, 31.0, 120.0]), cycle_inputs()),
        min_size=1,
        max_size=40,
    ),
    resets=st.sets(st.integers(0, 39), max_size=5),
)
def test_shortcut_and_result_reuse_change_nothing(steps, resets):
    fast, full = Protection.from_params(P), FullStepProtection(fault_table(P), P.rest_current_a)
    t = 0.0
    for k, (dt, raw) in enumerate(steps):
        t += dt
        inputs = ProtectionInputs(**raw)
        if k in resets:
            for code in full.latched:
                assert fast.reset(code, t, nominal()) == full.reset(code, t, nominal())
        a, b = fast.evaluate(t, inputs), full.evaluate(t, inputs)
        assert (a.alarms, a.latched) == (b.alarms, b.latched)
        assert (a.open_contactors, a.allow_charge, a.allow_discharge) == (
            b.open_contactors,
            b.allow_charge,
            b.allow_discharge,
        )
        assert [(e.time_s, e.code, e.kind, e.tier, e.message) for e in a.events] == [
            (e.time_s, e.code, e.kind, e.tier, e.message) for e in b.events
        ]
        assert all(same_float(x.value, y.value) for x, y in zip(a.events, b.events, strict=True))
        for fr, br in zip(fast._rows, full._rows, strict=True):
            assert (fr.tier, fr.latched, fr.exceeded, fr.since, fr.clear_since) == (
                br.tier,
                br.latched,
                br.exceeded,
                br.since,
                br.clear_since,
            )


def test_quantity_value_agrees_with_quantity_values():
    inputs = nominal(pack_current_a=-12.0, pack_voltage_v=NAN, n_invalid_temperature=1)
    values = quantity_values(inputs)
    assert set(values) == set(Quantity)
    for q in Quantity:
        assert same_float(quantity_value(q, inputs), values[q])
    assert values[Quantity.CHARGE_CURRENT] == 12.0
    assert math.isnan(values[Quantity.PACK_VOLTAGE_MISMATCH])
    assert values[Quantity.INVALID_TEMPERATURE] == 1.0
