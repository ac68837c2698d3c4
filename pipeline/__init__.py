"""Host side of edgepipe: recipe, model, stages, orchestration, store, report, release. May import ``targets``."""

__version__ = "0.1.0"
