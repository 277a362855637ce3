"""Test doubles shared by every test folder: the network edge (MLClient) and the inputs the CLIs read.

Importable as `fakes.*` because pytest puts tests/ (the folder of the root conftest.py) on sys.path.
"""
