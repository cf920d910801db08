"""coursegrader: the course's notebook pipeline and grading side (on nbgrader's format)."""
