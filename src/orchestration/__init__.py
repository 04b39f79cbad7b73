"""Recipes: a recipe file turned into stage commands, run in order with stamps and resume."""
