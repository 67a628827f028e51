"""Metric definitions, dashboards and alert rules for Paxyo Realtime."""
