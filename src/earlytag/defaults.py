"""Defaults shared by the engine, training and the CLI, in a module that imports nothing heavy (the CLI builds its
parser from it before torch is loaded)."""

# How token exit treats a halted word's uncertainty in later layers: "rescore" (the authors' code: every later
# head scores its copied hidden state, and that enters its neighbours' windows) or "frozen" (the value it halted
# with, earlytag's first rule). Frozen is the default because it measured better: on all six models of
# docs/results.md section 3 (MiniLM NER stage 1 / two self-sampling recipes / kv=drop, MiniLM UPOS stage 1 /
# self-sampling, MPNet NER) it scores the same or higher at equal FLOPs speed-up and reaches higher speed-ups
# (rescore pays for a head on every halted word at every later layer). `--halted rescore` runs the authors' rule.
HALTED_DEFAULT = "frozen"
HALTED_RULES = ("rescore", "frozen")

# Heads (earlytag.model.heads) and a CRF head's inference settings, named once for the CLI, configs and the code.
HEADS = ("softmax", "crf")
DECODERS = ("viterbi", "meanfield", "blockwise")
CRF_UNCERTAINTIES = ("meanfield", "exact", "emission")

# Inference precisions (earlytag.model.precision) and layer backends (earlytag.api, earlytag.engine.backends).
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-mixed")
BACKENDS = ("torch", "onnxruntime", "auto", "onednn")
QUANTIZE_BACKENDS = ("torch", "onnxruntime")  # what earlytag quantize chooses for (int8_mixed keys)
ONNX_PRECISIONS = ("fp32", "int8", "int8-mixed")  # what the onnxruntime backend runs
ONEDNN_PRECISIONS = ("fp32", "bf16")  # what the onednn backend runs (torch's engine, products prepacked in oneDNN)
