"""`python -m deployment.serving`: the server, as the container runs it (deployment/serve.py locally)."""
import sys

from deployment.serving.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m deployment.serving"))
