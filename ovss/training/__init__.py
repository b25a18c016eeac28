"""Training loops for the trained methods (proposal networks, prompt learning)."""
