"""What a run leaves: the run folder and its records, the gate, the INT8 guard, the store, history, report and plots."""
