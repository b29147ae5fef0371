"""The in-process simulator: k virtual clients sharing one model in memory."""
