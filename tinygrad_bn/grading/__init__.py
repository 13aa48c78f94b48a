"""Judging a student's own CS231n normalization code: the box it runs in, the recorded calls,
the verdicts and the line where a wrong value departs (`layers.check_layers`)."""
