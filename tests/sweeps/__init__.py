"""Tests of the sweeps stage."""
