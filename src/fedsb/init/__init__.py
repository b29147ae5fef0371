"""The LoRA-SB initialisation across the federation: what each client sends (init sources) and how the server combines it."""
