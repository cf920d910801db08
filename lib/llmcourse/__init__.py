"""llmcourse: the library behind the course "From RNNs to aligned LLMs".

Every chapter imports this package. Each subpackage is production code with
docstrings, shape annotations and tests against reference implementations.
"""

__version__ = "0.1.0"
