"""Documents generated from the codecs and the subject names (the AsyncAPI document)."""
