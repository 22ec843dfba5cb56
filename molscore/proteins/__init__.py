"""Proteins: C-alpha coarse-graining, the structure-based (Go) reference model and protein metrics."""
