"""Sans-I/O protocol cores.

Rule: nothing under ``core`` awaits, opens a socket, reads a clock, touches a
disk or calls the global ``random`` module. Time arrives as an argument
(``now`` in seconds, or logical ticks) and randomness as a seeded
``random.Random``. Every core is driven by its shell one input at a time and
hands back the effects (messages to send, state to persist, entries to apply)
for the shell to carry out. ``tests/unit/test_layers.py`` enforces the rule.
"""
