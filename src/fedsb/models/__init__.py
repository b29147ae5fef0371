"""Loading base models offline (builtins, local directories, the SmolLM2 GGUF) and their default targets and heads."""
