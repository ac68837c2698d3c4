"""The measured search: space, host and device halves, cache, report. Verdicts come from pipeline.results."""
