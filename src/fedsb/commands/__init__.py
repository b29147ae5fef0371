"""One module per CLI command (``fedsb <command>``)."""
