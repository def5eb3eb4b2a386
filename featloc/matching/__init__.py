"""Matchers. Build them by name with `featloc.load_matcher`."""
