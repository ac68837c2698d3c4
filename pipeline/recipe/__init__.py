"""The edge of the pipeline: the recipe (validated once), the user's model, data, task and metric, and `check`."""
