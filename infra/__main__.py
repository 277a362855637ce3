"""Entry point for `pulumi up` (Pulumi.yaml: main: infra/); the program lives in infra/program.py.

Pulumi's language host runs this file with `runpy.run_path("infra/", run_name="__main__")`; the tests
do the same and read `outputs`, what the program exported.
"""
import sys
from pathlib import Path

try:
    from infra.program import main
except ModuleNotFoundError:  # a .venv without the editable install: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from infra.program import main

outputs = main()
