"""Benchmarks and long runs. Each command ends with one line ``RESULT {json}``."""
import json
import os

# TensorFlow's C++ logging drowns the figures otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def result(payload: dict) -> None:
    print("RESULT " + json.dumps(payload, sort_keys=True), flush=True)
