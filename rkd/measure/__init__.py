"""Measurements on models' outputs: CAM, attention IoU over batches, fidelity and calibration metrics."""
