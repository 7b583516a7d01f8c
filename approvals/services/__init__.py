"""The lifecycle's state changes that people and agents ask for, one module per concern:
``calls`` (intake, the agent's cancel and retry, expiry, abandoned reads), ``decisions``
(reviewers' verdicts), ``attention`` and ``recovery`` (unknown outcomes), ``reveals``.

Each function locks the call (``transitions.lock_call``), checks, moves it through the one
door (``transitions.change``), writes its audit event in the same transaction, and sends
work to the executor only after commit (``execution.send.approve``). Import from the module
that defines a name.
"""
