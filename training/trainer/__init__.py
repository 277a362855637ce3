"""The trainer package: the only code uploaded to the Azure ML cluster.

Locally it runs as `python -m training.trainer.fine_tune`; the job uploads this folder as
`trainer/` and runs `python -m trainer.fine_tune`. So its modules import each other relatively
and nothing outside this folder (third-party packages and the standard library only).
"""
