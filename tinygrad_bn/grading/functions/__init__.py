"""The table's entries, one file per layer of the assignment (`table.py` collects them;
import them through it)."""
