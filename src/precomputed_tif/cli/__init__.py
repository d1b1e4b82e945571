"""Command-line front ends. Argument parsing, logging set-up and progress bars live only here."""
