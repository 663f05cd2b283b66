class ContractError(ValueError):
    """A payload, topic, id or bundle that breaks the contract. The message names the problem."""
