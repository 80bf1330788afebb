"""What every lesson needs but no lesson teaches: finding a database, resetting a
lesson's schema, logging and the shape of a `main.py`."""
