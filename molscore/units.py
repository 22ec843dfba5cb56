"""The one unit system of molscore: nm, ps, kJ/mol, K, amu (OpenMM's).

Derived: force kJ/(mol nm), velocity nm/ps; 1 amu nm^2/ps^2 = 1 kJ/mol, so no conversion factor appears
in the equations of motion. Analytic toy potentials are read in these units too (their "own units" are
taken as kJ/mol and nm; only kT matters for their Boltzmann distribution).
"""

KB = 0.00831446261815324
"""Boltzmann constant, kJ/(mol K)."""


def kT_from_temperature(temperature: float) -> float:
    """Thermal energy kB T in kJ/mol for a temperature in K."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return KB * temperature


def temperature_from_kT(kT: float) -> float:
    """Temperature in K for a thermal energy kT in kJ/mol."""
    if not kT > 0:
        raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
    return kT / KB
