"""FitSense Distill: an MLOps pipeline distilling a fitness-coaching teacher into a small student."""

__version__ = "0.1.0"
