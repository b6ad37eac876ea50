"""A training run: configuration (config.py, toml.py), session and checkpoints (session.py), the
loop (loop.py), the pipeline data -> train -> compact -> report (pipeline.py), the report and
plots, the run folder's layout (rundir.py) and torchrun (distributed.py)."""
