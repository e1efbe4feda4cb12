"""Command-line tools that produce the project's assets."""
