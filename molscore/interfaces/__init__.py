"""Bridges to the ecosystem: OpenMM (reference force fields, MD data), ASE (calculator), peptide building."""
