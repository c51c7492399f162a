"""Estimators we own the method of (off-policy values, uplift statistics, CUPED): pure
functions over arrays and frames, checked against peer libraries, used by training and reports."""
