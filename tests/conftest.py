"""The test tree mirrors the package's layers (core, norm, fast, check, train, viz); tests of the
layers above them (cs231n, the command line, the layering itself) sit at the top.

Shared helpers (`numeric.py`) and the students' files (`students/`) live here, beside this file.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
