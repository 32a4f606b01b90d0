"""Datasets that ship with the packages tau-lab installs (nothing is downloaded)."""
