"""History checkers shared by the simulator (tests/sim) and the real-process chaos runs."""
