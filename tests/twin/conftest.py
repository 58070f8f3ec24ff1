"""Shared fixtures of the twin tests: a small synthetic cell, independent of the fitted files."""

from __future__ import annotations

import numpy as np
import pytest

from openbess.cell.params import CellParams, ThermalParams

#: ``[ageing]`` table in the format of :mod:`openbess.cell.ageing` (round numbers, LFP-like).
SYNTHETIC_AGEING: dict[str, float] = {
    "cal_q_k": 0.0012,
    "cal_q_z": 0.5,
    "cal_q_ea_j_per_mol": 50000.0,
    "cal_q_tref_degc": 25.0,
    "cal_q_soc_center": 0.5,
    "cal_q_soc_c0": 1.0,
    "cal_q_soc_c1": 0.8,
    "cal_r_k": 0.002,
    "cal_r_z": 0.5,
    "cal_r_ea_j_per_mol": 50000.0,
    "cal_r_tref_degc": 25.0,
    "cyc_q_k": 0.0002,
    "cyc_q_z": 0.6,
    "cyc_q_ea_j_per_mol": 30000.0,
    "cyc_q_tref_degc": 25.0,
    "cyc_r_k": 0.0003,
    "cyc_r_z": 0.6,
    "cyc_r_ea_j_per_mol": 30000.0,
    "cyc_r_tref_degc": 25.0,
    "cycle_deadband_soc": 0.02,
}


def synthetic_cell(capacity_ah: float = 2.0) -> CellParams:
    """An LFP-like cell with round numbers: 11 SoC points, 3 temperatures, 2 RC pairs."""
    soc = np.linspace(0.0, 1.0, 11)
    ocv = 3.0 + 0.3 * soc + 0.1 * (soc - 0.5) ** 3
    temps = np.array([0.0, 25.0, 45.0])
    ocv_t = np.stack([ocv - 0.002, ocv, ocv + 0.001])
    r0 = np.stack([np.full(11, 0.03), np.full(11, 0.015), np.full(11, 0.012)]) * (2.0 / capacity_ah)
    rc1 = r0 * 0.4
    rc2 = r0 * 0.3
    return CellParams(
        name="synthetic",
        chemistry="LFP",
        source="synthetic test cell",
        capacity_ah=capacity_ah,
        voltage_min_v=2.5,
        voltage_max_v=3.65,
        nominal_voltage_v=3.2,
        soc_grid=soc,
        temperature_grid_degc=temps,
        ocv_v=ocv_t,
        hysteresis_v=np.full((3, 11), 0.01),
        r0_ohm=r0,
        rc_r_ohm=np.stack([rc1, rc2]),
        rc_tau_s=np.array([[8.0, 10.0, 12.0], [80.0, 100.0, 120.0]]),
        coulombic_efficiency=np.array([0.99, 0.998, 0.999]),
        hysteresis_rate=50.0,
        thermal=ThermalParams(
            mass_kg=0.07 * capacity_ah / 2.0,
            specific_heat_j_per_kg_k=1100.0,
            conductance_to_coolant_w_per_k=0.2,
        ),
        ageing=SYNTHETIC_AGEING,
    )


@pytest.fixture
def cell() -> CellParams:
    """The synthetic 2 Ah cell."""
    return synthetic_cell()
