"""`python -m labelenh …` (what `torchrun -m labelenh` runs)."""

from labelenh.cli import main

if __name__ == "__main__":
    main()
