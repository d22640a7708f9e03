"""python -m train.export_cli  ==  harness-export"""
import sys

from train.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
