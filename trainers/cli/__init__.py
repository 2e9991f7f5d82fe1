"""The ``export`` and ``eval`` commands of ``launch.py``: argument parsing, checks before any heavy work, the HF export
with its model card and drafter, and the Hub upload."""
