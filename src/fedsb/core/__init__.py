"""The engine-independent core both engines run: building a federation, local training, bounded aggregation, round steps and the run summary."""
