"""Applications that wire the pieces: the daemon, offline restoration, the benchmark."""
