"""Embedded tasks: synthetic sequence tasks and a byte-level corpus from the standard library."""
