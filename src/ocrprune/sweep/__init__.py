"""`ocrprune sweep`: the same pages unpruned and at each keep setting (`run`), their fidelity to the
unpruned text (`fidelity`), and the table, JSON and chart that recommend a keep (`report`)."""
