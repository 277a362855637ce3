"""The project's server (docs/ARCHITECTURE.md section 5): one package, and the serving image's whole build context.

  cli.py         the command line (`python -m deployment.serve`; `python -m deployment.serving` in the image)
  app.py         the FastAPI app: routers from routes/, error handlers (errors.py), the request log
  routes/        probes (/live, /health), chat (/v1/...), score (/score and /)
  dialects.py    request bodies in, one ChatRequest out; replies in the dialect that asked
  generation.py  one request through the engine: context cap, whole or streamed reply
  limits.py      context, max_tokens and concurrency caps, sized once for every engine
  engines/       the `Engine` seam (base.py) and the engines behind it
  model_dir.py   where the weights and tokenizer are, in the three layouts this project meets
  Dockerfile     the CPU image (deployment/environment.py stages this folder with its requirements)

Nothing here imports from the rest of the repository, so the staged folder alone serves.
"""
