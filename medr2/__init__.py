"""medr2: chest X-ray report generation that shows its work (Med-R2 + MRG-R1)."""
__version__ = "0.1.0"
