"""Files that load without unpickling anything, written atomically: model files (modelfile.py)
and training checkpoints (checkpoint.py), both safetensors with JSON metadata."""
