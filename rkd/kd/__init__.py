"""Knowledge distillation: teachers, the fused teacher ensemble, KD losses, the distillation step and job."""
