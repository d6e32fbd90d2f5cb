"""Evaluation: harnesses and the sandboxed code runner they share with s3ft's code judge (:mod:`.sandbox`)."""
