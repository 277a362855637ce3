from common.cli import run_cli
from demo.pipeline import main

run_cli(main)
