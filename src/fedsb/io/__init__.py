"""Files a run reads and writes: run directories, checkpoints, safetensors state, PEFT export, plots and experiment tracking."""
