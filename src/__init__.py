"""UW-Madison GI tract segmentation pipeline.

Importing the package turns off albumentations' update check (a request to PyPI on its import):
nothing may use the network at run time.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
