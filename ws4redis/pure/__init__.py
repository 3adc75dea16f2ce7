"""Pure-Python reference implementation of the hot path; ext/ holds its compiled twin."""
