"""The phases of one run (prepare -> export -> measure), shared by `edgepipe run` and `edgepipe search`.

No phase after `prepare` takes the Recipe: they take the plan prepare resolved from it."""
