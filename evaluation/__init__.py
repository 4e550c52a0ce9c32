"""Evaluation of base student, fine-tuned student and teacher."""
