"""Local feature extractors. Build them by name with `featloc.load_extractor`."""
