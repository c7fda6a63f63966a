"""Evaluation: golden reward on the embedded task (judges, win rates and KL come with tralign.evaluate)."""
