"""earlytag: early-exit sequence labeling (NER, POS, chunking, Chinese word segmentation) with BERT-family
encoders. Sentences or single tokens stop climbing the encoder once they are confident.

    from earlytag import Tagger
    tagger = Tagger.from_pretrained("models/ner")
    tagger("Angela Merkel visited Paris.", exit={"policy": "token", "threshold": 0.1})

The names below are imported on first use, so ``import earlytag.storage`` (or the CLI's ``--help``) does not
pay for importing torch and transformers.
"""

__version__ = "0.1.0"

_LAZY = {"Tagger": "api", "Prediction": "api", "ExitConfig": "engine", "ConfigError": "errors",
         "DataError": "errors", "EarlytagError": "errors"}

__all__ = ["ConfigError", "DataError", "EarlytagError", "ExitConfig", "Prediction", "Tagger", "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'earlytag' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
