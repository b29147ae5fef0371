"""fedsb: federated LoRA-SB (Fed-SB) fine-tuning, with FedIT, FFA-LoRA, FedEx-LoRA and FLoRA baselines."""

__version__ = "0.1.0"
