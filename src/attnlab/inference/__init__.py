"""Inference: ``attnlab.load(run_dir)`` gives a :class:`Translator` or a :class:`Classifier`.

::

    import attnlab
    translator = attnlab.load("runs/en_ja")
    translator.translate(["March 15, 2024", "forty-two"], beam=5)
"""

from attnlab.inference.classifier import Classification, Classifier
from attnlab.inference.engine import DecodingEngine
from attnlab.inference.loading import load
from attnlab.inference.translator import Translation, Translator

__all__ = ["Classification", "Classifier", "DecodingEngine", "Translation", "Translator", "load"]
