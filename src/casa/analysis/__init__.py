"""Built-in analyses, running them, and their outputs."""
