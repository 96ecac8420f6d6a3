"""What a run writes: metrics log, summary, plots, comparison tables."""
