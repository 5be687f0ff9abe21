"""HPT's headline experiment, reproducible at any scale: `fasthpt demo`.

preset (what to run, from YAML) -> plan and runs (cached pretraining runs, seeds, the scratch
budget grid extended until it converges) -> evaluation (kNN and linear probe, chosen on val,
reported on test) -> analysis (the paper's claims with their intervals) -> fasthpt.report.
"""
