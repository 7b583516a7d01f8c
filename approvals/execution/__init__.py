"""The executor: an approved call runs exactly once (see docs/exactly-once.md).

``tasks`` is the only Celery entry point; ``send`` hands a call to it after commit;
``runner`` claims (``claim``), runs the handler, and stores the outcome (``finish``).
"""
