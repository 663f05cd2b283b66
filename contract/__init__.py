"""The one shared contract between edge, cloud and converter.

Topics, payload schemas and codecs, the model-bundle manifest and its verification, feature
normalisation and the alert state machine. Imports neither TensorFlow nor FastAPI.
"""

from contract.errors import ContractError

SCHEMA_VERSION = 1

__all__ = ["ContractError", "SCHEMA_VERSION"]
