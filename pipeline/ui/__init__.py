"""What the user sees: console lines, progress and third-party output routed to run.log."""
