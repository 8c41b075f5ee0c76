"""Defaults shared by the engine, training and the CLI, in a module that imports nothing heavy (the CLI builds its
parser from it before torch is loaded)."""

# How token exit treats a halted word's uncertainty in later layers: "rescore" (the authors' code: every later
# head scores its copied hidden state, and that enters its neighbours' windows) or "frozen" (the value it halted
# with, earlytag's first rule). docs/results.md section 3 has the measurement behind the default.
HALTED_DEFAULT = "rescore"
HALTED_RULES = ("rescore", "frozen")
