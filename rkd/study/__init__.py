"""The paper's study: `rkd analyze`, the magnitude sweep, its executors, status and report."""
