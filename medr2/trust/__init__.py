"""Trust: whether an input is inside what the model learned (gate), how sure the model is of each finding (confidence)."""
