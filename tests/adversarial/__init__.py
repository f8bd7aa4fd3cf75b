"""Probes of issue 17, "trust nothing from disk": one test module per item."""
