"""molscore: equivariant score and energy models of molecular conformations.

Data flow: MD files -> dataset -> training -> saved model -> sampler / simulation / path sampler
-> trajectory files -> analysis. Units everywhere: nm, ps, kJ/mol, K, amu (see :mod:`molscore.units`).
"""

__version__ = "0.1.0"
