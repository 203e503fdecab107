"""Metrics: AUP and the 95% interval of an accuracy. No model code here."""

from d3llm.metrics.aup import ALPHA, aup, aup_table, weight
from d3llm.metrics.interval import wilson_interval, wilson_interval_pct

__all__ = ["ALPHA", "aup", "aup_table", "weight", "wilson_interval", "wilson_interval_pct"]
