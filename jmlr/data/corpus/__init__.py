"""The corpus: :class:`Corpus` (:mod:`.core`) over compact string columns (:mod:`.columns`), with chunking
(:mod:`.chunking`) and the file formats (:mod:`.formats`)."""
from .core import Corpus, DedupReport

__all__ = ["Corpus", "DedupReport"]
