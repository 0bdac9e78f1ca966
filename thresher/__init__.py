"""thresher: a free language model that improves itself from its own public conversations.

Importing the package is cheap: model backends load only when an engine is created.
"""

__version__ = "0.1.0"
