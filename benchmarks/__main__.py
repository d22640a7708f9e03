"""python -m benchmarks  ==  harness-bench"""
import sys

from benchmarks.cli import main

sys.exit(main())
