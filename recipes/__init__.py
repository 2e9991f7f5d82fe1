"""Recipes: embedded tasks and the scripts that build what the trainers consume (base models, datasets)."""
