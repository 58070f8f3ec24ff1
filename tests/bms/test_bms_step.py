"""The step of ``benchmarks/bms_step.py`` on a small pack: behaviour, not time."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from openbess.contract import ContactorState

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bms_step.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bms_step_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("max_filter_cells", [None, 16])
def test_the_benchmark_step_on_a_small_pack(bench: ModuleType, max_filter_cells) -> None:
    """3 strings of 2 x 8 cells; with 16 cells per block the filter runs in 3 blocks."""
    rig = bench.build(3, 2, 8, time_phases=True, max_filter_cells=max_filter_cells)
    est = rig.bms.estimator
    assert est.block_start.size == (1 if max_filter_cells is None else 3)
    tel = None
    closed_at = None
    for k in range(150):
        tel, wall, cpu = rig.step()
        assert wall > 0
        assert cpu >= 0
        if closed_at is None and tel.contactor is ContactorState.CLOSED:
            closed_at = k
    assert tel is not None
    assert closed_at is not None
    assert closed_at < 15
    assert tel.contactor is ContactorState.CLOSED
    assert tel.alarms == ()
    # Every phase ran in the last step.
    assert all(v > 0 for k, v in rig.phase_s.items() if k != "estimate_cells")
    # The estimate is consistent with the twin's truth and says how sure it is.
    true_soc = rig.pack.cell_soc
    err = est.soc - true_soc
    std = est.soc_std
    assert np.all(np.abs(err) <= 3.0 * std + 0.01)
    x = tel.extra
    assert 0.0 < x["soc_std"] < 0.2
    assert tel.soc_cell_min <= tel.soc <= tel.soc_cell_max + 1e-12
    assert tel.energy_available_wh == pytest.approx(x["soe_wh"])
    assert x["energy_usable_wh"] == pytest.approx(x["soe_wh"] + x["energy_chargeable_wh"])
    nominal_wh = rig.bms.setup.n_cells * 280.0 * rig.bms.setup.cell.nominal_voltage_v
    assert tel.capacity_wh == pytest.approx(nominal_wh * tel.soh)
    assert 0.9 * nominal_wh < x["energy_usable_wh"] < 1.1 * nominal_wh
    assert tel.energy_available_wh == pytest.approx(tel.soc * x["energy_usable_wh"], rel=0.05)
    assert tel.soh == pytest.approx(1.0, abs=0.05)
    assert x["soh_capacity_std"] > 0
    assert x["resistance_ohm"] > 0
    assert x["resistance_std_ohm"] > 0
    assert math.isfinite(x["current_offset_a"])
    for direction in ("discharge", "charge"):
        p10, p60 = x[f"sop_{direction}_10s_w"], x[f"sop_{direction}_60s_w"]
        assert 0 < p60 <= p10
        # Within the BMS's current limit (the SoP respects it).
        limit = (
            tel.discharge_current_limit_a
            if direction == "discharge"
            else (tel.charge_current_limit_a)
        )
        assert x[f"sop_{direction}_10s_a"] <= limit + 1e-9
    # Balancing state and per-cell SoC are published for every cell.
    assert rig.bms.cell_soc.shape == (48,)
    assert rig.bms.balancing.shape == (48,)
