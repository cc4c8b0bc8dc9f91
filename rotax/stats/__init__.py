"""Interval estimates the study's claims rest on (numpy only; no model code)."""
