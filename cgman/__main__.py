"""python -m cgman"""
from .cli.main import main

main()
