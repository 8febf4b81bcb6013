"""Tests of the reports stage (tables, plots, HTML page)."""
