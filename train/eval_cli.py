"""python -m train.eval_cli  ==  harness-eval"""
import sys

from train.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
