"""Preference data: the embedded synthetic task and the tokenise/collate path."""
