"""Tests of the fault injector: validation, scheduling, clearing."""

from __future__ import annotations

import pytest

from openbess.twin.faults import DEFAULT_PARAMS, FaultInjector, FaultKind
from openbess.twin.pack import PackTopology


@pytest.fixture
def injector() -> FaultInjector:
    return FaultInjector(n_cells=10, n_strings=2, n_temperature_sensors=4)


def test_unknown_kind_is_named(injector: FaultInjector) -> None:
    with pytest.raises(ValueError, match="'melted_busbar'"):
        injector.inject("melted_busbar", 0, 0.0)
    with pytest.raises(ValueError, match="'melted_busbar'"):
        injector.clear("melted_busbar", 0)


@pytest.mark.parametrize(
    ("kind", "target", "what"),
    [
        (FaultKind.STUCK_CELL_VOLTAGE, 10, "cell"),
        (FaultKind.OPEN_WIRE, -1, "cell"),
        (FaultKind.CURRENT_SENSOR_DRIFT, 2, "string"),
        (FaultKind.TEMPERATURE_SENSOR_LOST, 4, "temperature_sensor"),
        (FaultKind.COOLING_FAILURE, 5, "string"),
        (FaultKind.WELDED_CONTACTOR, 1, "contactor"),
        (FaultKind.LINK_LOST, 1, "link"),
    ],
)
def test_target_out_of_range_is_named(
    injector: FaultInjector, kind: FaultKind, target: int, what: str
) -> None:
    with pytest.raises(
        ValueError, match=rf"{kind.value}: target {target} out of range for a {what}"
    ):
        injector.inject(kind, target, 0.0)


def test_unknown_and_invalid_parameters(injector: FaultInjector) -> None:
    with pytest.raises(ValueError, match="unknown parameter 'ohms'"):
        injector.inject(FaultKind.INTERNAL_SHORT, 1, 0.0, ohms=1.0)
    with pytest.raises(ValueError, match="resistance_ohm must be > 0"):
        injector.inject(FaultKind.INTERNAL_SHORT, 1, 0.0, resistance_ohm=0.0)
    with pytest.raises(ValueError, match="remaining_fraction"):
        injector.inject(FaultKind.COOLING_FAILURE, 1, 0.0, remaining_fraction=1.5)
    assert len(injector) == 0


def test_defaults_are_filled_in(injector: FaultInjector) -> None:
    f = injector.inject("internal_short", 3, 100.0)
    assert f.kind is FaultKind.INTERNAL_SHORT
    assert dict(f.params) == DEFAULT_PARAMS[FaultKind.INTERNAL_SHORT]
    g = injector.inject(FaultKind.CURRENT_SENSOR_DRIFT, 1, 0.0, rate_a_per_s=0.5)
    assert g.params["rate_a_per_s"] == 0.5


def test_schedule_active_and_clear(injector: FaultInjector) -> None:
    injector.inject(FaultKind.LINK_LOST, 0, at_time_s=100.0)
    injector.inject(FaultKind.OPEN_WIRE, 4, at_time_s=50.0)
    assert not injector.link_lost(99.9)
    assert injector.link_lost(100.0)
    assert [f.kind for f in injector.active(60.0)] == [FaultKind.OPEN_WIRE]
    assert len(injector.active(200.0)) == 2
    assert injector.active(200.0, FaultKind.LINK_LOST)[0].target == 0
    assert injector.is_active(FaultKind.OPEN_WIRE, 4, 50.0)
    assert not injector.is_active(FaultKind.OPEN_WIRE, 3, 50.0)
    v = injector.version
    assert injector.clear(FaultKind.LINK_LOST, 0)
    assert injector.version == v + 1
    assert not injector.link_lost(200.0)
    assert not injector.clear(FaultKind.LINK_LOST, 0)
    assert len(injector.faults) == 1


def test_reinjection_replaces(injector: FaultInjector) -> None:
    injector.inject(FaultKind.INTERNAL_SHORT, 2, 0.0, resistance_ohm=1.0)
    injector.inject(FaultKind.INTERNAL_SHORT, 2, 10.0, resistance_ohm=3.0)
    assert len(injector) == 1
    assert injector.faults[0].params["resistance_ohm"] == 3.0
    assert injector.faults[0].at_time_s == 10.0


def test_for_topology_sizes_targets() -> None:
    inj = FaultInjector.for_topology(PackTopology(3, 2, 4), n_temperature_sensors=12)
    inj.inject(FaultKind.STUCK_CELL_VOLTAGE, 23, 0.0)
    inj.inject(FaultKind.COOLING_FAILURE, 2, 0.0)
    with pytest.raises(ValueError, match="target 24"):
        inj.inject(FaultKind.STUCK_CELL_VOLTAGE, 24, 0.0)
