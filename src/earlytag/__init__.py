"""earlytag: early-exit sequence labeling (NER, POS, chunking, Chinese word segmentation) with BERT-family
encoders. Sentences or single tokens stop climbing the encoder once they are confident.

    from earlytag import Tagger
    tagger = Tagger.from_pretrained("models/ner")
    tagger("Angela Merkel visited Paris.", exit={"policy": "token", "threshold": 0.1})
"""

__version__ = "0.1.0"

from .api import Prediction, Tagger  # noqa: E402
from .engine import ExitConfig  # noqa: E402
from .errors import ConfigError, DataError, EarlytagError  # noqa: E402

__all__ = ["ConfigError", "DataError", "EarlytagError", "ExitConfig", "Prediction", "Tagger", "__version__"]
