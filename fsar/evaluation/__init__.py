"""Evaluation: scoring fixed episodes from encode-once splits (``scoring``), and the results, their
statistics and files (``results``)."""
