"""Benchmarks for peft-studio: ``python -m bench`` runs them all (see bench/RESULTS.md)."""
