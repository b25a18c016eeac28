"""``python -m ovss ...`` (also what ``torchrun -m ovss eval ...`` runs)."""

from .cli import main

main()
