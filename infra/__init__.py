"""The Pulumi program (run by `pulumi up` through infra/__main__.py) and the stack-outputs contract."""
