"""What tests/ and bench/ both need: real replica processes (harness.py), and whole-database
reads and clean-ups for comparisons (databases.py). Not part of the product."""
