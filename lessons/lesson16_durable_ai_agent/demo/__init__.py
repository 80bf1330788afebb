"""The demonstration: the task functions `main.py` and the tests run on this lesson's engine."""
