"""python -m cgman"""
from .cli import main

main()
