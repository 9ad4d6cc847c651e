"""Extraction: parcellation, confounds, cleaning, resampling to the model's TR."""
