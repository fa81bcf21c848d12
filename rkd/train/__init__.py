"""Training runs: data and loaders, the epoch loop, optimizer, checkpoints, run folders, torchrun."""
